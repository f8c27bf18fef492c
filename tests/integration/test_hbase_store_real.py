"""HBaseStore against a real HBase: what the contract suite cannot show (Thrift restarts, factory URLs)."""

from __future__ import annotations

import time
import uuid

import pytest
from scalerec_adapters.factory import make_store
from scalerec_adapters.hbase_store import HBaseStore
from scalerec_adapters.store import StoreUnavailable, TableSpec

from .conftest import HOST, PrivateStack, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLE = TableSpec("profiles", ("p",), ttl_seconds={"p": 3600}, split_keys=(b"4", b"8"))


def _namespace() -> str:
    return f"it{uuid.uuid4().hex[:10]}"


def test_store_recovers_when_the_thrift_server_comes_back(private_thrift: PrivateStack) -> None:
    port = int(private_thrift.env["SCALEREC_HBASE_THRIFT_PORT"])
    store = HBaseStore(HOST, port, namespace=_namespace(), pool_size=3, timeout_ms=5_000)
    try:
        store.ensure_tables([TABLE])
        store.put_many("profiles", [(b"u%d" % i, {b"p:n": b"%d" % i}) for i in range(20)])
        # Touch several pooled connections so that all of them go stale at the restart.
        for i in range(3):
            assert store.get("profiles", b"u%d" % i) == {b"p:n": b"%d" % i}

        private_thrift.down("thrift")
        with pytest.raises(StoreUnavailable, match=rf"{HOST}:{port}.*get from 'profiles'"):
            store.get("profiles", b"u1")
        assert not store.healthy()

        private_thrift.up("thrift")
        # No reconnect call: the next operations find fresh connections by themselves.
        assert store.get("profiles", b"u1") == {b"p:n": b"1"}
        assert len(list(store.scan("profiles", batch_size=7))) == 20
        assert store.increment("profiles", b"c", b"p:n", 2) == 2
        assert store.healthy()
    finally:
        store.drop_tables()
        store.close()


def test_unreachable_store_fails_fast_with_context() -> None:
    store = HBaseStore(HOST, free_port(), namespace=_namespace(), pool_size=1, timeout_ms=2_000)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"HBase Thrift .*describe table 'profiles'"):
        store.get("profiles", b"u1")
    assert time.monotonic() - started < 5
    assert not store.healthy()
    store.close()


def test_factory_url_builds_a_working_store(shared_hbase: tuple[str, int]) -> None:
    host, port = shared_hbase
    namespace = _namespace()
    store = make_store(f"hbase://{host}:{port}?pool=2&timeout_ms=3000", namespace=namespace)
    assert isinstance(store, HBaseStore)
    assert store._timeout_ms == 3000  # the ranker's short socket timeout (tests/faults/test_latency.py)
    try:
        store.ensure_tables([TABLE])
        store.put("profiles", b"u1", {b"p:n": b"1"})
        assert store.get("profiles", b"u1") == {b"p:n": b"1"}
    finally:
        store.drop_tables()
        store.close()


def test_tables_live_under_the_namespace_prefix(shared_hbase: tuple[str, int]) -> None:
    """Two deployments on one HBase never see each other's tables."""
    import happybase

    host, port = shared_hbase
    a, b = HBaseStore(host, port, namespace=_namespace()), HBaseStore(host, port, namespace=_namespace())
    try:
        a.ensure_tables([TABLE])
        b.ensure_tables([TABLE])
        a.put("profiles", b"u1", {b"p:n": b"a"})
        assert b.get("profiles", b"u1") == {}
        raw = happybase.Connection(host, port)
        try:
            assert f"{a.namespace}_profiles".encode() in raw.tables()
            families = raw.table(f"{a.namespace}_profiles").families()
            assert families[b"p"]["time_to_live"] == 3600, "the family TTL reached HBase"
        finally:
            raw.close()
    finally:
        for s in (a, b):
            s.drop_tables()
            s.close()


def test_a_server_error_names_the_row_by_its_keyed_hash_never_the_user_id(shared_hbase: tuple[str, int]) -> None:
    """HBase's own message quotes what it failed on; none of it may put a user id into a log line."""
    from scalerec_core.logging import key_ref
    from scalerec_storage.schema import profile_key

    host, port = shared_hbase
    user = "alice.smith-77"
    row = profile_key(user)
    store = HBaseStore(host, port, namespace=_namespace(), pool_size=1)
    try:
        store.ensure_tables([TABLE])
        store.put("profiles", row, {b"p:n": b"abc"})  # 3 bytes: HBase refuses to increment it
        with pytest.raises(StoreUnavailable) as failed:
            store.increment("profiles", row, b"p:n", 1)
        message = str(failed.value)
        # What an operator needs stays: the operation, the server's reason and the row's reference.
        assert "Field is not a long" in message and "DoNotRetryIOException" in message, message
        assert key_ref(row) in message, message
        assert user not in message and row.decode() not in message, message
        # Nor in the traceback a log line would print with it (the server's text is not chained).
        assert failed.value.__cause__ is None and failed.value.__suppress_context__
    finally:
        store.drop_tables()
        store.close()
