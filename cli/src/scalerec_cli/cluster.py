"""Run the five services as separate processes on loopback, the way a newcomer (or a test) sees them.

Each service is started with ``python -m scalerec_<name>``, its own port, and a
shared DATA_DIR for the embedded backends (or the real backends' URLs); the
cluster waits for every ``/readyz`` and stops them all on exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
from scalerec_core.service import free_port

SERVICES = ("collector", "preprocessor", "trainer", "ranker", "evaluator")


@dataclass
class LocalCluster:
    data_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    services: tuple[str, ...] = SERVICES
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def service_env(self, service: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "DATA_DIR": str(self.data_dir.resolve()),
                "MODEL_REPOSITORY": str((self.data_dir / "model_repository").resolve()),
                "HOST": "127.0.0.1",
                "PORT": str(self.ports[service]),
                "LOG_LEVEL": env.get("LOG_LEVEL", "INFO"),
            }
        )
        env.update(self.env)
        return env

    def start(self, service: str) -> None:
        self.ports.setdefault(service, free_port())
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{service}.log", "ab")  # noqa: SIM115 - owned by the child process
        self.procs[service] = subprocess.Popen(
            [sys.executable, "-m", f"scalerec_{service}"],
            env=self.service_env(service),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_all(self, timeout: float = 120) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for service in self.services:
            self.start(service)
        for service in self.services:
            self.wait_ready(service, timeout)

    def wait_ready(self, service: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = self.procs[service]
            if proc.poll() is not None:
                raise RuntimeError(f"{service} exited with {proc.returncode}; see {self.log_dir / service}.log")
            try:
                r = httpx.get(f"{self.url(service)}/healthz", timeout=2)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise TimeoutError(f"{service} not healthy after {timeout}s ({last}); see {self.log_dir / service}.log")

    def stop(self, service: str, kill: bool = False, timeout: float = 20) -> None:
        proc = self.procs.pop(service, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def stop_all(self) -> None:
        for service in list(self.procs):
            self.stop(service)

    def __enter__(self) -> LocalCluster:
        self.start_all()
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.stop_all()
