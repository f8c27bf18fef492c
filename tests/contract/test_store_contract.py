"""Wide-column store contract: HBase semantics the services build their row keys and counters on."""

from __future__ import annotations

import threading
import time

import pytest
from contract_backends import StoreBackend
from scalerec_adapters.store import TableSpec, WideColumnStore, decode_counter

USERS = TableSpec("users", ("p", "h"))


@pytest.fixture
def users(store: WideColumnStore) -> WideColumnStore:
    store.ensure_tables([USERS])
    store.ensure_tables([USERS])  # idempotent
    return store


def test_put_then_get_returns_the_cells(users: WideColumnStore) -> None:
    users.put("users", b"u1", {b"p:name": b"Ada", b"p:locale": b"en-GB", b"h:last": b"\x00\xff"})
    assert users.get("users", b"u1") == {b"p:name": b"Ada", b"p:locale": b"en-GB", b"h:last": b"\x00\xff"}
    users.put("users", b"u1", {b"p:name": b"Grace"})  # overwrite one cell, keep the others
    assert users.get("users", b"u1")[b"p:name"] == b"Grace"
    assert users.get("users", b"u1")[b"p:locale"] == b"en-GB"
    assert users.get("users", b"nobody") == {}


def test_columns_filter_by_family_and_qualifier(users: WideColumnStore) -> None:
    users.put("users", b"u1", {b"p:a": b"1", b"p:b": b"2", b"h:a": b"3"})
    assert users.get("users", b"u1", columns=[b"p"]) == {b"p:a": b"1", b"p:b": b"2"}
    assert users.get("users", b"u1", columns=[b"h:a"]) == {b"h:a": b"3"}
    assert users.get("users", b"u1", columns=[b"p:b", b"h"]) == {b"p:b": b"2", b"h:a": b"3"}
    assert users.get("users", b"u1", columns=[b"p:zzz"]) == {}
    rows = dict(users.scan("users", columns=[b"h"]))
    assert rows == {b"u1": {b"h:a": b"3"}}


def test_scan_is_unsigned_byte_order(users: WideColumnStore) -> None:
    keys = [b"\xff", b"\x80", b"\x7f", b"\x00", b"a", b"a\x00", b"a\xff", b"", b"\x00\x00", b"b", b"\x7f\xff"]
    keys = [k for k in keys if k]  # HBase has no empty row key
    users.put_many("users", [(k, {b"p:k": k}) for k in keys])
    scanned = [k for k, _ in users.scan("users")]
    assert scanned == sorted(keys), "rows must come back in unsigned byte order (memcmp, shorter first)"
    assert scanned[:2] == [b"\x00", b"\x00\x00"] and scanned[-1] == b"\xff"
    assert [k for k, _ in users.scan("users", batch_size=2)] == sorted(keys), "batching changes nothing"


def test_scan_start_stop_prefix_limit(users: WideColumnStore) -> None:
    rows = [b"a", b"ab", b"ab\x00", b"ab\xff", b"ab\xff\xff", b"ac", b"b", b"\xff\xff", b"\xff\xff\x01"]
    users.put_many("users", [(r, {b"p:x": b"1"}) for r in rows])

    def keys(**kw: object) -> list[bytes]:
        return [k for k, _ in users.scan("users", **kw)]  # type: ignore[arg-type]

    assert keys(start=b"ab", stop=b"ac") == [b"ab", b"ab\x00", b"ab\xff", b"ab\xff\xff"]
    assert keys(start=b"ab\xff") == [b"ab\xff", b"ab\xff\xff", b"ac", b"b", b"\xff\xff", b"\xff\xff\x01"]
    assert keys(stop=b"ab") == [b"a"]
    assert keys(prefix=b"ab") == [b"ab", b"ab\x00", b"ab\xff", b"ab\xff\xff"]
    assert keys(prefix=b"ab\xff") == [b"ab\xff", b"ab\xff\xff"], "prefix ending in 0xff needs a carry"
    assert keys(prefix=b"\xff\xff") == [b"\xff\xff", b"\xff\xff\x01"], "an all-0xff prefix scans to the end"
    assert keys(prefix=b"zz") == []
    assert keys(limit=3) == [b"a", b"ab", b"ab\x00"]
    assert keys(prefix=b"ab", limit=2, batch_size=1) == [b"ab", b"ab\x00"]


def test_scan_streams_large_tables_in_batches(users: WideColumnStore) -> None:
    n = 2_500
    users.put_many("users", [(b"row%05d" % i, {b"p:i": b"%d" % i, b"h:j": b"x"}) for i in range(n)])
    it = users.scan("users", batch_size=100)
    first_key, first_row = next(it)
    assert first_key == b"row00000" and first_row == {b"p:i": b"0", b"h:j": b"x"}
    rest = list(it)
    assert len(rest) == n - 1
    assert [k for k, _ in rest] == [b"row%05d" % i for i in range(1, n)]
    assert all(len(r) == 2 for _, r in rest), "a row's cells must not be split across batches"


def test_put_many_and_get_many(users: WideColumnStore) -> None:
    users.put_many("users", [(b"u%d" % i, {b"p:n": b"%d" % i}) for i in range(10)])
    got = users.get_many("users", [b"u1", b"u3", b"missing", b"u9"])
    assert got == {b"u1": {b"p:n": b"1"}, b"u3": {b"p:n": b"3"}, b"u9": {b"p:n": b"9"}}
    assert users.get_many("users", [b"u2"], columns=[b"h"]) == {}, "rows with no matching cell are absent"
    assert users.get_many("users", []) == {}


def test_put_many_is_all_or_nothing(users: WideColumnStore) -> None:
    users.put("users", b"before", {b"p:x": b"1"})
    with pytest.raises(Exception):  # noqa: B017 - backends raise their own error type for a bad family
        users.put_many(
            "users",
            [(b"ok1", {b"p:x": b"1"}), (b"ok2", {b"p:x": b"2"}), (b"bad", {b"nofamily:x": b"3"})],
        )
    assert users.get_many("users", [b"ok1", b"ok2", b"bad"]) == {}
    assert users.get("users", b"before") == {b"p:x": b"1"}


def test_put_tables_writes_every_table_in_one_call(store: WideColumnStore) -> None:
    store.ensure_tables([USERS, TableSpec("items", ("d",))])
    n = 2_500  # several chunks per table on HBase (1,000 rows a round trip), sent concurrently
    store.put_tables(
        {
            "users": [(b"u%05d" % i, {b"p:n": b"%d" % i, b"h:last": b"i%d" % (i % 7)}) for i in range(n)],
            "items": [(b"i%d" % i, {b"d:title": b"item %d" % i}) for i in range(7)],
        }
    )
    users = dict(store.scan("users", batch_size=1000))
    assert len(users) == n and users[b"u01234"] == {b"p:n": b"1234", b"h:last": b"i2"}
    assert store.get("items", b"i3") == {b"d:title": b"item 3"}
    # One cell written twice in one call: the later write wins, as with put() one after the other.
    store.put_tables({"users": [(b"twice", {b"p:n": b"first"}), (b"twice", {b"p:n": b"second"})], "items": []})
    assert store.get("users", b"twice") == {b"p:n": b"second"}


def test_put_tables_checks_every_cell_before_writing_any(store: WideColumnStore) -> None:
    store.ensure_tables([USERS, TableSpec("items", ("d",))])
    with pytest.raises(ValueError, match="nofamily"):
        store.put_tables(
            {
                "users": [(b"ok%d" % i, {b"p:x": b"1"}) for i in range(1500)],
                "items": [(b"bad", {b"nofamily:x": b"3"})],
            }
        )
    assert store.get_many("users", [b"ok0", b"ok1499"]) == {}
    assert store.get_many("items", [b"bad"]) == {}


def test_delete_row_columns_and_families(users: WideColumnStore) -> None:
    users.put("users", b"u1", {b"p:a": b"1", b"p:b": b"2", b"h:a": b"3", b"h:b": b"4"})
    users.delete("users", b"u1", columns=[b"p:a"])
    assert users.get("users", b"u1") == {b"p:b": b"2", b"h:a": b"3", b"h:b": b"4"}
    users.delete("users", b"u1", columns=[b"h"])
    assert users.get("users", b"u1") == {b"p:b": b"2"}
    users.delete("users", b"u1")
    assert users.get("users", b"u1") == {}
    users.put_many("users", [(b"x%d" % i, {b"p:a": b"1"}) for i in range(5)])
    users.delete_many("users", [b"x1", b"x3", b"never-existed"])
    assert [k for k, _ in users.scan("users")] == [b"x0", b"x2", b"x4"]


def test_increment_is_atomic_under_concurrency(users: WideColumnStore) -> None:
    threads, per_thread = 6, 40

    def work() -> None:
        for _ in range(per_thread):
            users.increment("users", b"item1", b"p:clicks")

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    total = threads * per_thread
    assert decode_counter(users.get("users", b"item1")[b"p:clicks"]) == total
    raw = users.get("users", b"item1")[b"p:clicks"]
    assert len(raw) == 8 and int.from_bytes(raw, "big", signed=True) == total, "8-byte big-endian like HBase"
    assert users.increment("users", b"item1", b"p:clicks", -(total + 5)) == -5
    assert users.increment("users", b"fresh", b"p:views", 7) == 7


def test_ttl_hides_expired_cells(store: WideColumnStore) -> None:
    store.ensure_tables([TableSpec("sessions", ("s", "keep"), ttl_seconds={"s": 1})])
    store.put("sessions", b"u1", {b"s:last": b"x", b"keep:name": b"y"})
    store.put("sessions", b"u2", {b"s:last": b"x"})
    assert store.get("sessions", b"u1") == {b"s:last": b"x", b"keep:name": b"y"}
    time.sleep(2.2)
    assert store.get("sessions", b"u1") == {b"keep:name": b"y"}
    assert store.get("sessions", b"u2") == {}
    assert dict(store.scan("sessions")) == {b"u1": {b"keep:name": b"y"}}
    assert store.get_many("sessions", [b"u1", b"u2"]) == {b"u1": {b"keep:name": b"y"}}
    store.put("sessions", b"u2", {b"s:last": b"fresh"})
    assert store.get("sessions", b"u2") == {b"s:last": b"fresh"}, "a rewrite starts a new lifetime"


def test_data_survives_reopening(store_backend: StoreBackend) -> None:
    first = store_backend.connect()
    first.ensure_tables([USERS])
    first.put_many("users", [(b"u%d" % i, {b"p:n": b"%d" % i}) for i in range(3)])
    first.increment("users", b"u0", b"h:count", 5)
    first.close()
    store_backend.clients.remove(first)

    second = store_backend.connect()
    assert [k for k, _ in second.scan("users")] == [b"u0", b"u1", b"u2"]
    assert decode_counter(second.get("users", b"u0")[b"h:count"]) == 5


def test_unknown_table_is_a_clear_error(store: WideColumnStore) -> None:
    with pytest.raises(Exception, match="never_created"):
        store.get("never_created", b"r")
    with pytest.raises(Exception, match="never_created"):
        store.put("never_created", b"r", {b"p:x": b"1"})
