"""The real servers (Kafka, HBase, Memcached) as contract-suite backends.

``conftest.py`` merges these registries into the embedded ones, so every contract test runs
unchanged against both kinds.  The servers are the ones ``scripts/stack/stack.sh up`` starts;
their addresses come from the same environment variables the script reads, with the same
defaults.  A server that is not there fails the test with a message that says how to start it:
it never skips, so a green run always means the real backends were exercised.

``SCALEREC_REAL_BACKENDS=0`` leaves the real backends out (an embedded-only run on a machine
where the stack cannot start); ``make test`` never sets it.

Isolation on shared servers: the suites already use unique topic, group and key names; each
store test gets its own HBase namespace (table prefix), whose tables are dropped when the test
process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import uuid
from pathlib import Path

from contract_backends import BusBackend, BusFactory, CacheFactory, StoreBackend, StoreFactory
from scalerec_adapters.cache import Cache

HOST = os.environ.get("SCALEREC_STACK_HOST", "127.0.0.1")
KAFKA_PORT = int(os.environ.get("SCALEREC_KAFKA_PORT", "19092"))
HBASE_THRIFT_PORT = int(os.environ.get("SCALEREC_HBASE_THRIFT_PORT", "19090"))
MEMCACHED_PORTS = [int(p) for p in os.environ.get("SCALEREC_MEMCACHED_PORTS", "11211 11212").split()]

_START_HINT = "start the local stack with `make stack-up` (scripts/stack/stack.sh up)"


class ServerNotRunning(RuntimeError):
    """A real backend's server is not listening: the stack was not started (or died)."""


def require_server(what: str, host: str, port: int, env: str) -> None:
    """Fail fast and clearly instead of letting a client retry against a closed port for its full timeout."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        raise ServerNotRunning(
            f"{what} is not reachable at {host}:{port} ({exc.strerror or exc}); {_START_HINT}. "
            f"The port comes from {env}."
        ) from exc


# -- Kafka ---------------------------------------------------------------------------------------------


def make_kafka_bus(tmp: Path) -> BusBackend:
    from scalerec_adapters.kafka_bus import KafkaEventBus

    require_server("Kafka", HOST, KAFKA_PORT, "SCALEREC_KAFKA_PORT")
    servers = f"{HOST}:{KAFKA_PORT}"
    client_id = f"contract-{uuid.uuid4().hex[:8]}"
    return BusBackend(
        open=lambda: KafkaEventBus(servers, default_partitions=4, client_id=client_id),
        url=f"kafka://{servers}",
    )


# -- HBase ---------------------------------------------------------------------------------------------

_namespaces: list[str] = []


def _drop_namespaces() -> None:
    """Drop the tables this process created, so repeated runs do not pile up regions in HBase.

    In parallel: each table costs HBase a disable and a delete procedure (about a second).
    """
    if not _namespaces:
        return
    import threading

    from scalerec_adapters.hbase_store import HBaseStore

    def drop(ns: str) -> None:
        with contextlib.suppress(Exception):
            store = HBaseStore(HOST, HBASE_THRIFT_PORT, namespace=ns, pool_size=1, timeout_ms=10_000)
            try:
                store.drop_tables()
            finally:
                store.close()

    # At exit pytest has closed the streams its log capture wrote to; a retry's log line must not
    # turn into a "--- Logging error ---" traceback on the console.
    logging.raiseExceptions = False
    # Plain threads: an executor refuses new work once the interpreter is shutting down.
    threads = [threading.Thread(target=drop, args=(ns,)) for ns in _namespaces]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    _namespaces.clear()


atexit.register(_drop_namespaces)


def make_hbase_store(tmp: Path) -> StoreBackend:
    from scalerec_adapters.hbase_store import HBaseStore

    require_server("HBase Thrift", HOST, HBASE_THRIFT_PORT, "SCALEREC_HBASE_THRIFT_PORT")
    namespace = f"ct{uuid.uuid4().hex[:10]}"
    _namespaces.append(namespace)
    return StoreBackend(open=lambda: HBaseStore(HOST, HBASE_THRIFT_PORT, namespace=namespace, pool_size=4))


# -- Memcached -----------------------------------------------------------------------------------------


def make_memcached_cache() -> Cache:
    from scalerec_adapters.memcached_cache import MemcachedCache

    # Both nodes must be up: with one down the client would quietly run on the other and the
    # test would not exercise the spread over nodes it is meant to.
    for port in MEMCACHED_PORTS:
        require_server("Memcached", HOST, port, "SCALEREC_MEMCACHED_PORTS")
    return MemcachedCache([(HOST, p) for p in MEMCACHED_PORTS])


_enabled = os.environ.get("SCALEREC_REAL_BACKENDS", "1").strip().lower() not in ("0", "false", "no", "off")

REAL_BUS_BACKENDS: dict[str, BusFactory] = {"kafka": make_kafka_bus} if _enabled else {}
REAL_STORE_BACKENDS: dict[str, StoreFactory] = {"hbase": make_hbase_store} if _enabled else {}
REAL_CACHE_BACKENDS: dict[str, CacheFactory] = {"memcached": make_memcached_cache} if _enabled else {}
