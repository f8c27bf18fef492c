"""All five services as processes on real Kafka, HBase and Memcached, for the fault tests.

Isolation (why these tests neither disturb nor are disturbed by anyone else on the machine):

* **The servers are private.**  The session starts its own Kafka, HBase (master and Thrift server)
  and two Memcached nodes with ``scripts/stack/stack.sh``, on free ports, in its own temporary
  folder, and stops them at the end.  A test may stop and restart them at will: the shared stack
  (``stack.sh up`` / ``make test``), which other test runs and developers use and restart at the
  same time, is neither touched nor needed.  What is needed is what ``stack.sh up`` needs (Java 17,
  the jars it caches, memcached), checked up front with a clear failure.
* **Data is private.**  A fresh broker has fresh topics and consumer groups and a fresh HBase has no
  tables, so no earlier run's events are read or counted again.  ``DEPLOYMENT`` is unique anyway
  (it names the HBase tables ``<deployment>_<table>`` and prefixes the cache keys).
* **Tests are independent.**  They share the running pipeline (one start-up, one trained model),
  but each sends its own users' events (ids prefixed with the test's tag) and counts only those,
  and each restores what it broke in a ``finally`` (the fixtures check it, so a test that failed
  half-way does not leave the next one without a server).  Any order, any subset works.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from scalerec_adapters.factory import make_bus, make_store
from scalerec_adapters.store import WideColumnStore
from scalerec_cli import driver
from scalerec_cli.cluster import LocalCluster
from scalerec_core.service import free_port as free_port_on
from scalerec_events.models import Event, Item
from scalerec_events.topics import Topic, dlq, topic_name
from scalerec_storage import records as r
from scalerec_storage import schema as s
from scalerec_synthetic import ShopConfig, generate_shop

from tests.faults.proxy import FaultProxy

REPO = Path(__file__).resolve().parents[2]
STACK_SH = REPO / "scripts" / "stack" / "stack.sh"
HOST = os.environ.get("SCALEREC_STACK_HOST", "127.0.0.1")

# The catalogue every test's events point into (same seed, same item ids).
ITEMS = 200
SEED_USERS = 150


def free_port() -> int:
    return free_port_on(HOST)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- private servers


@dataclass
class PrivateStack:
    """``stack.sh`` with its own folder and ports: the servers these tests may break."""

    root: Path
    kafka_port: int = field(default_factory=free_port)
    # What the broker tells clients to connect to: a FaultProxy listens there (test_latency).
    kafka_advertised_port: int = field(default_factory=free_port)
    kafka_controller_port: int = field(default_factory=free_port)
    kafka_sasl_ssl_port: int = field(default_factory=free_port)
    kafka_mtls_port: int = field(default_factory=free_port)
    zk_port: int = field(default_factory=free_port)
    master_port: int = field(default_factory=free_port)
    regionserver_port: int = field(default_factory=free_port)
    thrift_port: int = field(default_factory=free_port)
    memcached_ports: tuple[int, int] = field(default_factory=lambda: (free_port(), free_port()))

    @property
    def env(self) -> dict[str, str]:
        return {
            "SCALEREC_STACK_DIR": str(self.root),
            "SCALEREC_KAFKA_PORT": str(self.kafka_port),
            "SCALEREC_KAFKA_ADVERTISED_PORT": str(self.kafka_advertised_port),
            "SCALEREC_KAFKA_CONTROLLER_PORT": str(self.kafka_controller_port),
            "SCALEREC_KAFKA_SASL_SSL_PORT": str(self.kafka_sasl_ssl_port),
            "SCALEREC_KAFKA_MTLS_PORT": str(self.kafka_mtls_port),
            "SCALEREC_HBASE_ZK_PORT": str(self.zk_port),
            "SCALEREC_HBASE_MASTER_PORT": str(self.master_port),
            "SCALEREC_HBASE_REGIONSERVER_PORT": str(self.regionserver_port),
            "SCALEREC_HBASE_THRIFT_PORT": str(self.thrift_port),
            "SCALEREC_MEMCACHED_PORTS": " ".join(map(str, self.memcached_ports)),
        }

    @property
    def bus_url(self) -> str:
        # Collector sends give up after 5 s (default 30 s), so a broker outage is answered with 503s
        # that the client retries, instead of requests that hang for the whole outage.
        return f"kafka://{HOST}:{self.kafka_advertised_port}?send_timeout_s=5"

    @property
    def store_url(self) -> str:
        return f"hbase://{HOST}:{self.thrift_port}"

    @property
    def cache_url(self) -> str:
        return "memcached://" + ",".join(f"{HOST}:{p}" for p in self.memcached_ports)

    def run(self, *args: str, timeout: float = 240) -> None:
        proc = subprocess.run(
            ["bash", str(STACK_SH), *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"stack.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")

    def up(self, *servers: str) -> None:
        self.run("up", *servers)

    def down(self, *servers: str) -> None:
        self.run("down", *servers)

    def all_up(self) -> bool:
        ports = (self.kafka_port, self.zk_port, self.thrift_port, *self.memcached_ports)
        return all(_listening(p) for p in ports)


# ----------------------------------------------------------------------------- the pipeline


@dataclass
class FaultCluster:
    cluster: LocalCluster
    stack: PrivateStack
    deployment: str
    items: list[Item]
    seed_user: str  # has a history (in the cache and the store) and gets model recommendations
    model_version: int | None
    # Every service's Kafka and HBase traffic passes through these (pass mode unless a test says).
    kafka_proxy: FaultProxy
    hbase_proxy: FaultProxy
    repository: Path
    trained_version: int  # trained at start; promoted (model_version) only if it passed the gate

    def url(self, service: str) -> str:
        return self.cluster.url(service)

    def store(self) -> WideColumnStore:
        return make_store(self.stack.store_url, namespace=self.deployment)

    def where_missing(self, missing: set[str]) -> str:
        """For a failure message: whether Kafka holds the missing events (in the topic, in its dead
        letters) and what the preprocessor says of its consumers; says so if it could not tell."""
        lines: list[str] = []
        try:
            found = asyncio.run(_event_ids_on_the_bus(self.stack.bus_url, self.deployment))
            for where, ids in found.items():
                lines.append(f"{len(missing & ids)} of the {len(missing)} missing are in {where}")
        except Exception as exc:
            lines.append(f"could not read the events topic back: {exc!r}")
        try:
            metrics = httpx.get(f"{self.url('preprocessor')}/metrics", timeout=10).text
            lines += [
                m for m in metrics.splitlines() if m.startswith(("scalerec_bus_consumer_lag", "scalerec_bus_messages"))
            ]
        except Exception as exc:
            lines.append(f"could not read the preprocessor's metrics: {exc!r}")
        return "\n".join(lines)


async def _event_ids_on_the_bus(bus_url: str, deployment: str) -> dict[str, set[str]]:
    """Every event id in the raw events topic and in its dead-letter twin, read by a new group."""
    bus = make_bus(bus_url)
    await bus.start()
    out: dict[str, set[str]] = {}
    try:
        raw = topic_name(Topic.EVENTS_RAW, deployment)
        for name in (raw, dlq(raw)):
            consumer = await bus.consumer([name], f"diagnose-{uuid.uuid4().hex[:8]}")
            ids: set[str] = set()
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < 5:
                batch = await consumer.getmany(timeout_ms=500)
                if batch:
                    quiet_since = time.monotonic()
                ids.update(json.loads(m.value)["event_id"] for m in batch)
            await consumer.stop()
            out[name] = ids
    finally:
        await bus.close()
    return out


def _start_private_stack(stack: PrivateStack) -> None:
    try:
        stack.up("memcached", "kafka", "hbase")
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        pytest.fail(
            f"could not start the fault tests' private Kafka, HBase and Memcached with scripts/stack/stack.sh "
            f"(they need what `scripts/stack/stack.sh up` needs: Java 17, its cached jars, memcached; run that "
            f"once to fetch and check them, `make test` does):\n{exc}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    root = tmp_path_factory.mktemp("faults")
    stack = PrivateStack(root / "stack")
    deployment = f"faults-{uuid.uuid4().hex[:8]}"
    # Kafka clients reach the broker through the port it advertises: this proxy forwards it to the
    # real listener. The services' HBase traffic goes through one too (the tests' own reads do not).
    kafka_proxy = FaultProxy(HOST, stack.kafka_port, host=HOST, port=stack.kafka_advertised_port).start()
    hbase_proxy = FaultProxy(HOST, stack.thrift_port, host=HOST).start()
    cluster = LocalCluster(
        root / "services",
        env={
            "BUS_URL": stack.bus_url,
            "STORE_URL": f"hbase://{hbase_proxy.address}",
            "CACHE_URL": stack.cache_url,
            "DEPLOYMENT": deployment,
            "AUTH": "disabled",
            "MODEL_SIZE": "demo",
            "TRAIN_AFTER_EXAMPLES": "0",
            "MAX_EPOCHS": "8",
            "TIME_BUDGET_S": "15",
            "LOG_LEVEL": "INFO",
            # The preprocessor's batches (default 2,000): small enough that a backlog of a few thousand
            # events takes many batches, so a kill lands in the middle of one (test_faults).
            "POLL_MAX_RECORDS": "500",
        },
    )
    try:
        _start_private_stack(stack)
        cluster.start_all(timeout=240)
        shop = generate_shop(ShopConfig(users=SEED_USERS, items=ITEMS, events_per_user=20, seed=5))
        asyncio.run(driver.post_batches(f"{cluster.url('collector')}/v1/items", "items", shop.items, 500))
        sent = asyncio.run(driver.post_batches(f"{cluster.url('collector')}/v1/events", "events", shop.events, 1000))
        driver.wait_preprocessed(cluster.url("preprocessor"), sent["accepted"], timeout=180)
        job = driver.train(cluster.url("trainer"), timeout=300)
        report = driver.wait_report(cluster.url("evaluator"), job["version"], timeout=180)
        version = job["version"] if report["promoted"] else None
        if version is not None:
            driver.wait_serving(cluster.url("ranker"), version, timeout=120)
        yield FaultCluster(
            cluster,
            stack,
            deployment,
            shop.items,
            shop.users[0],
            version,
            kafka_proxy,
            hbase_proxy,
            root / "services" / "model_repository",
            job["version"],
        )
    finally:
        cluster.stop_all()
        stack.down()  # every server, data and all, goes with the temporary folder
        kafka_proxy.close()
        hbase_proxy.close()


@pytest.fixture
def pipeline(faults: FaultCluster) -> Iterator[FaultCluster]:
    """The shared pipeline, with every private server and service up before and after each test."""
    faults.stack.up("memcached", "kafka", "hbase")
    faults.kafka_proxy.set("pass")
    faults.hbase_proxy.set("pass")
    for service in faults.cluster.services:
        if faults.cluster.procs.get(service) is None or faults.cluster.procs[service].poll() is not None:
            faults.cluster.start(service)
            faults.cluster.wait_ready(service)
    try:
        yield faults
    finally:
        faults.kafka_proxy.set("pass")
        faults.hbase_proxy.set("pass")
    assert faults.stack.all_up(), "the test left a private server down"


# ----------------------------------------------------------------------------- test data


def events_for(tag: str, users: int, events_per_user: float, seed: int) -> list[Event]:
    """Events of ``users`` new users (``<tag>-u…``), with event ids no other test uses."""
    shop = generate_shop(ShopConfig(users=users, items=ITEMS, events_per_user=events_per_user, seed=seed))
    return [
        e.model_copy(update={"event_id": f"{tag}-{e.event_id}", "user_id": f"{tag}-{e.user_id}"}) for e in shop.events
    ]


def unique_tag(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:6]}"


# ----------------------------------------------------------------------------- the client side


@dataclass
class Poster:
    """Posts batches through the collector from a thread, retrying each batch until it gets a 202.

    Records exactly which event ids the collector accepted (every id of a batch answered 202 is
    accepted: new, or a duplicate of an earlier accepted send), and how many 503s it was answered.
    """

    url: str
    batches: Sequence[Sequence[Event]]
    pause_s: float = 0.0
    deadline_s: float = 180.0
    accepted: set[str] = field(default_factory=set)
    unavailable: int = 0
    errors: list[str] = field(default_factory=list)
    done_batches: int = 0
    _thread: threading.Thread | None = None

    def start(self) -> Poster:
        self._thread = threading.Thread(target=self._run, name="poster", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.deadline_s
        with httpx.Client(timeout=30) as client:
            for batch in self.batches:
                body = {"events": [e.model_dump(mode="json", exclude_none=True) for e in batch]}
                while True:
                    if time.monotonic() > deadline:
                        self.errors.append(f"batch {self.done_batches} never accepted within {self.deadline_s}s")
                        return
                    try:
                        resp = client.post(self.url, json=body)
                    except httpx.HTTPError as exc:  # no answer: unknown outcome, send the same batch again
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                        time.sleep(0.5)
                        continue
                    if resp.status_code == 503:
                        self.unavailable += 1
                        time.sleep(0.5)
                        continue
                    if resp.status_code != 202:
                        self.errors.append(f"HTTP {resp.status_code}: {resp.text[:300]}")
                        return
                    data = resp.json()
                    if data["rejected"] or data["accepted"] + data["duplicates"] != len(batch):
                        self.errors.append(f"unexpected answer {data}")
                        return
                    self.accepted.update(e.event_id for e in batch)
                    self.done_batches += 1
                    break
                if self.pause_s:
                    time.sleep(self.pause_s)

    def join(self, timeout: float | None = None) -> None:
        assert self._thread is not None
        self._thread.join(timeout if timeout is not None else self.deadline_s + 30)
        assert not self._thread.is_alive(), "the poster did not finish"
        hard = [e for e in self.errors if e.startswith(("HTTP", "unexpected", "batch"))]
        assert not hard, hard


@dataclass
class Answer:
    at: float
    user: str
    status: int
    body: dict[str, Any] | None
    error: str = ""


@dataclass
class RankerProbe:
    """Asks the ranker for recommendations in a loop from a thread and keeps every answer."""

    url: str
    users: Sequence[str]
    fresh_prefix: str | None = None  # also ask, each round, for a user id never asked before (recorded as the prefix)
    interval_s: float = 0.2
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RankerProbe:
        self._thread = threading.Thread(target=self._run, name="ranker-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)

    def _run(self) -> None:
        n = 0
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                asks = [(u, u) for u in self.users]
                if self.fresh_prefix is not None:
                    n += 1
                    asks.append((self.fresh_prefix, f"{self.fresh_prefix}{n}"))
                for label, user in asks:
                    at = time.monotonic()
                    try:
                        resp = client.get(f"{self.url}/v1/recommendations", params={"user_id": user, "k": 10})
                        body = resp.json() if resp.status_code == 200 else None
                        self.answers.append(Answer(at, label, resp.status_code, body, "" if body else resp.text[:200]))
                    except httpx.HTTPError as exc:
                        self.answers.append(Answer(at, label, 0, None, f"{type(exc).__name__}: {exc}"))
                self._stop.wait(self.interval_s)

    def between(self, start: float, end: float, user: str | None = None) -> list[Answer]:
        return [a for a in self.answers if start <= a.at <= end and (user is None or a.user == user)]

    def assert_always_answered(self) -> None:
        failed = [a for a in self.answers if a.status != 200]
        assert self.answers, "the probe got no answer at all"
        assert not failed, f"{len(failed)} of {len(self.answers)} recommendation requests failed: {failed[:5]}"
        for a in self.answers:
            assert a.body is not None and a.body["items"], f"an empty answer: {a}"
            # An answer that did not come from the served model must say so.
            if a.body["model_version"] is None or a.body["scorer"] == "baseline":
                assert a.body["fallback"] is True and a.body["fallback_reason"], a.body


# ----------------------------------------------------------------------------- the store side


def stored_event_ids(store: WideColumnStore, users: Sequence[str]) -> list[str]:
    """Event ids of every interactions row of ``users`` (a list: a duplicate would show twice)."""
    out: list[str] = []
    for user in users:
        for key, _ in store.scan(s.INTERACTIONS, prefix=s.user_prefix(user), columns=[r.INTERACTION], batch_size=5000):
            out.append(s.last_part(key))
    return out


def assert_stored_exactly_once(
    store: WideColumnStore,
    users: Sequence[str],
    accepted: set[str],
    timeout: float = 90,
    explain: Callable[[set[str]], str] | None = None,
) -> list[str]:
    """Wait until every accepted event is an interaction in HBase, then: none missing, none extra, none twice.

    ``explain`` (``FaultCluster.where_missing``) adds where the missing events are to the failure.
    """
    deadline = time.monotonic() + timeout
    ids: list[str] = []
    while time.monotonic() < deadline:
        try:
            ids = stored_event_ids(store, users)
        except Exception:  # the store may still be coming back
            ids = []
        if accepted <= set(ids):
            break
        time.sleep(1.0)
    time.sleep(1.0)  # anything still in flight would land now
    ids = stored_event_ids(store, users)
    missing = accepted - set(ids)
    extra = set(ids) - accepted
    twice = len(ids) - len(set(ids))
    assert not missing, (
        f"{len(missing)} of {len(accepted)} accepted events are not in HBase, e.g. {sorted(missing)[:5]}"
        + (f"\n{explain(missing)}" if explain is not None else "")
    )
    assert not extra, f"{len(extra)} events in HBase were never accepted, e.g. {sorted(extra)[:5]}"
    assert twice == 0, f"{twice} events are stored twice"
    return ids


def users_of(events: Sequence[Event]) -> list[str]:
    return sorted({e.user_id for e in events})


def batches(events: Sequence[Event], size: int) -> list[Sequence[Event]]:
    return [events[i : i + size] for i in range(0, len(events), size)]
