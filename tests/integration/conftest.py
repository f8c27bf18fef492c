"""Fixtures for the adapter tests against real servers.

Two kinds of server:

* the **shared stack** that ``scripts/stack/stack.sh up`` (``make stack-up``) started — used
  read/write by tests that need nothing but a working server; a missing one fails the test with
  the command that starts it (never a skip);
* **private servers** that a fault test starts with the same script on free ports in its own
  folder, and may stop and restart at will without disturbing anyone else using the shared stack
  (other test runs, a developer's services).  Private Thrift servers attach to the shared HBase:
  a Thrift server holds no data, so restarting one is exactly the fault a client sees.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from scalerec_core.service import free_port as free_port_on

REPO = Path(__file__).resolve().parents[2]
STACK_SH = REPO / "scripts" / "stack" / "stack.sh"

HOST = os.environ.get("SCALEREC_STACK_HOST", "127.0.0.1")
KAFKA_PORT = int(os.environ.get("SCALEREC_KAFKA_PORT", "19092"))
# The stack broker's secured listeners and the certificates stack.sh made for them.
KAFKA_SASL_SSL_PORT = int(os.environ.get("SCALEREC_KAFKA_SASL_SSL_PORT", "19094"))
KAFKA_MTLS_PORT = int(os.environ.get("SCALEREC_KAFKA_MTLS_PORT", "19095"))
KAFKA_TLS_DIR = Path(os.environ.get("SCALEREC_STACK_DIR", REPO / "var" / "stack")) / "kafka" / "tls"
KAFKA_USER, KAFKA_PASSWORD = "scalerec", "scalerec-dev-password"  # stack.sh's test broker's
HBASE_THRIFT_PORT = int(os.environ.get("SCALEREC_HBASE_THRIFT_PORT", "19090"))
HBASE_ZK_PORT = int(os.environ.get("SCALEREC_HBASE_ZK_PORT", "12181"))
MEMCACHED_PORTS = [int(p) for p in os.environ.get("SCALEREC_MEMCACHED_PORTS", "11211 11212").split()]


def free_port() -> int:
    return free_port_on(HOST)


def require_server(what: str, port: int, env: str) -> None:
    try:
        with socket.create_connection((HOST, port), timeout=2):
            return
    except OSError as exc:
        pytest.fail(
            f"{what} is not reachable at {HOST}:{port} ({exc}); start the local stack with "
            f"`make stack-up` (scripts/stack/stack.sh up). The port comes from {env}.",
            pytrace=False,
        )


@dataclass
class PrivateStack:
    """``stack.sh`` with its own folder and ports: what the test starts, the test may break."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SCALEREC_STACK_DIR": str(self.root), **self.env}
        proc = subprocess.run(
            ["bash", str(STACK_SH), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0 and args[0] != "status":
            raise AssertionError(f"stack.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc

    def up(self, *services: str) -> None:
        self.run("up", *services)

    def down(self, *services: str) -> None:
        self.run("down", *services)


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[PrivateStack]:
    """An empty private stack; everything it started is stopped at teardown, whatever the test did."""
    stack = PrivateStack(tmp_path / "stack")
    yield stack
    stack.run("down")


@pytest.fixture
def private_kafka(private_stack: PrivateStack) -> PrivateStack:
    private_stack.env.update(
        SCALEREC_KAFKA_PORT=str(free_port()),
        SCALEREC_KAFKA_CONTROLLER_PORT=str(free_port()),
        SCALEREC_KAFKA_SASL_SSL_PORT=str(free_port()),
        SCALEREC_KAFKA_MTLS_PORT=str(free_port()),
        SCALEREC_MEMCACHED_PORTS="",
    )
    private_stack.up("kafka")
    return private_stack


@pytest.fixture
def private_thrift(private_stack: PrivateStack) -> PrivateStack:
    require_server("HBase's ZooKeeper", HBASE_ZK_PORT, "SCALEREC_HBASE_ZK_PORT")
    private_stack.env.update(
        SCALEREC_HBASE_ZK_PORT=str(HBASE_ZK_PORT),
        SCALEREC_HBASE_THRIFT_PORT=str(free_port()),
        SCALEREC_MEMCACHED_PORTS="",
    )
    private_stack.up("thrift")
    return private_stack


@pytest.fixture
def private_memcached(private_stack: PrivateStack) -> PrivateStack:
    private_stack.env.update(SCALEREC_MEMCACHED_PORTS=f"{free_port()} {free_port()}")
    private_stack.up("memcached")
    return private_stack


@pytest.fixture
def shared_kafka() -> str:
    require_server("Kafka", KAFKA_PORT, "SCALEREC_KAFKA_PORT")
    return f"{HOST}:{KAFKA_PORT}"


@pytest.fixture
def shared_hbase() -> tuple[str, int]:
    require_server("HBase Thrift", HBASE_THRIFT_PORT, "SCALEREC_HBASE_THRIFT_PORT")
    return HOST, HBASE_THRIFT_PORT


@pytest.fixture
def shared_memcached() -> list[tuple[str, int]]:
    for port in MEMCACHED_PORTS:
        require_server("Memcached", port, "SCALEREC_MEMCACHED_PORTS")
    return [(HOST, p) for p in MEMCACHED_PORTS]
