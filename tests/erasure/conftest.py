"""Services as separate processes on the shared real stack (Kafka, HBase, two Memcached nodes), with
several replicas of one service, for the erasure and rebalance tests.

Isolation: every test gets its own ``DEPLOYMENT`` (its own topics, consumer groups, HBase tables and
cache keys) on the shared servers, which it never stops; what it breaks are its own service
processes (SIGSTOP, SIGKILL).  Each process logs to a file the tests read (user ids in clear must
not appear in them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymemcache.client.base import Client
from scalerec_adapters.cache import CacheKeys
from scalerec_adapters.factory import make_store
from scalerec_adapters.store import WideColumnStore
from scalerec_core.service import free_port
from scalerec_storage import records as r

from tests.integration.conftest import (
    HBASE_THRIFT_PORT,
    HOST,
    KAFKA_PORT,
    MEMCACHED_PORTS,
    require_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Proc:
    name: str
    service: str
    port: int
    log: Path
    popen: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def signal(self, sig: signal.Signals) -> None:
        os.killpg(self.popen.pid, sig)


@dataclass
class Deployment:
    """One deployment's services on the shared stack."""

    root: Path
    name: str
    env: dict[str, str]
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def bus_url(self) -> str:
        return f"kafka://{HOST}:{KAFKA_PORT}"

    def start(self, name: str, service: str, **env: str) -> Proc:
        """Start process ``name`` running ``service`` (a second replica is just another name)."""
        port = free_port()
        log = self.root / f"{name}.log"
        full = {
            **os.environ,
            **self.env,
            "DATA_DIR": str(self.root / "data"),
            "MODEL_REPOSITORY": str(self.root / "data" / "model_repository"),
            "HOST": HOST,
            "PORT": str(port),
            **env,
        }
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", f"scalerec_{service}"],
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.procs[name] = Proc(name, service, port, log, popen)
        return proc

    def wait_ready(self, *names: str, timeout: float = 180) -> None:
        for name in names:
            proc = self.procs[name]
            deadline = time.monotonic() + timeout
            while True:
                if proc.popen.poll() is not None:
                    raise AssertionError(f"{name} exited with {proc.popen.returncode}:\n{proc.log.read_text()[-3000:]}")
                # A preprocessor is ready once its consumers run; the others once they answer.
                probe = "/readyz" if proc.service == "preprocessor" else "/healthz"
                try:
                    if httpx.get(f"{proc.url}{probe}", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name} not ready after {timeout}s:\n{proc.log.read_text()[-3000:]}")
                time.sleep(0.3)

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        if proc.popen.poll() is None:
            with _suppress_lookup():
                proc.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                proc.signal(sig)
            try:
                proc.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.signal(signal.SIGKILL)
                proc.popen.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def store(self) -> WideColumnStore:
        return make_store(self.env["STORE_URL"], namespace=self.name)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.root.glob("*.log"))

    # -- waiting for the preprocessors ------------------------------------------------------------

    def stats(self, *names: str) -> list[dict[str, Any]]:
        return [httpx.get(f"{self.procs[n].url}/v1/stats", timeout=10).json() for n in names]

    def wait_drained(self, *preprocessors: str, timeout: float = 180) -> None:
        """Until every preprocessor replica has handled and committed everything on its partitions."""
        deadline = time.monotonic() + timeout
        quiet = 0
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.stats(*preprocessors)
                lag = sum(w["lag"] + int(w["failing"]) for s in last for w in s["workers"].values())
            except httpx.HTTPError as exc:
                last, lag = repr(exc), 1
            quiet = quiet + 1 if lag == 0 else 0
            if quiet >= 3:
                return
            time.sleep(1.0)
        raise AssertionError(f"the preprocessors did not drain within {timeout}s: {last}")


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return isinstance(exc, ProcessLookupError)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    require_server("Kafka", KAFKA_PORT, "SCALEREC_KAFKA_PORT")
    require_server("HBase Thrift", HBASE_THRIFT_PORT, "SCALEREC_HBASE_THRIFT_PORT")
    for port in MEMCACHED_PORTS:
        require_server("Memcached", port, "SCALEREC_MEMCACHED_PORTS")
    name = f"er{uuid.uuid4().hex[:8]}"
    env = {
        "BUS_URL": f"kafka://{HOST}:{KAFKA_PORT}",
        "STORE_URL": f"hbase://{HOST}:{HBASE_THRIFT_PORT}",
        "CACHE_URL": "memcached://" + ",".join(f"{HOST}:{p}" for p in MEMCACHED_PORTS),
        "DEPLOYMENT": name,
        "TOPIC_PARTITIONS": "2",
        "AUTH": "disabled",
        "LOG_LEVEL": "INFO",
        "LOG_ID_KEY": "erasure-tests",
        "POLL_MAX_RECORDS": "50",  # many small batches: an erasure lands between a batch's reads and writes
    }
    dep = Deployment(tmp_path, name, env)
    try:
        yield dep
    finally:
        dep.stop_all()
        store = dep.store()
        try:
            store.drop_tables()  # type: ignore[attr-defined]
        finally:
            store.close()


def memcached_values(deployment: str, user_id: str) -> list[bytes]:
    """Every value of ``user_id``'s cache entries on every Memcached node (asked one by one)."""
    keys = r.user_cache_keys(CacheKeys(deployment), user_id)
    found: list[bytes] = []
    for port in MEMCACHED_PORTS:
        node = Client((HOST, port))
        try:
            found += [v for v in node.get_many(keys).values() if v is not None]
        finally:
            node.close()
    return found


def post_events(url: str, events: Sequence[dict[str, Any]], client: httpx.Client) -> dict[str, Any]:
    """POST a batch until it is answered 202 (a 503 is retried: the same batch, deduplicated by id)."""
    while True:
        resp = client.post(f"{url}/v1/events", json={"events": list(events)})
        if resp.status_code == 503:
            time.sleep(0.3)
            continue
        assert resp.status_code == 202, resp.text
        body: dict[str, Any] = resp.json()
        assert not body["rejected"], body
        return body
