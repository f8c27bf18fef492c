"""Hot-data cache contract: Memcached's get/set/delete/TTL semantics, shared by every backend."""

from __future__ import annotations

import time
import uuid

import pytest
from scalerec_adapters.cache import Cache, CacheKeys


@pytest.fixture
def keys() -> CacheKeys:
    """A deployment prefix unique to the test, so a shared cache server needs no flushing."""
    return CacheKeys(f"contract-{uuid.uuid4().hex[:10]}")


def test_set_get_delete(cache: Cache, keys: CacheKeys) -> None:
    k = keys.key("profile", 1, "u1")
    assert cache.get(k) is None
    cache.set(k, b"\x00binary\xff")
    assert cache.get(k) == b"\x00binary\xff"
    cache.set(k, b"newer")
    assert cache.get(k) == b"newer"
    cache.delete(k)
    assert cache.get(k) is None
    cache.delete(k)  # deleting a missing key is not an error


def test_get_many_returns_hits_only(cache: Cache, keys: CacheKeys) -> None:
    items = {keys.key("feat", 1, f"i{i}"): b"v%d" % i for i in range(20)}
    cache.set_many(items)
    wanted = [*list(items)[:5], keys.key("feat", 1, "missing")]
    assert cache.get_many(wanted) == {k: items[k] for k in list(items)[:5]}
    assert cache.get_many([]) == {}
    cache.delete_many(list(items)[:3])
    assert set(cache.get_many(list(items))) == set(list(items)[3:])


def test_version_bump_misses_old_entries(cache: Cache, keys: CacheKeys) -> None:
    cache.set(keys.key("scores", 7, "u1"), b"old model")
    assert cache.get(keys.key("scores", 8, "u1")) is None
    assert cache.get(keys.key("scores", 7, "u1")) == b"old model"


def test_long_or_spaced_ids_still_work(cache: Cache, keys: CacheKeys) -> None:
    k = keys.key("query", 1, "a query with spaces " + "x" * 300)
    assert len(k) <= 250 and " " not in k
    cache.set(k, b"ok")
    assert cache.get(k) == b"ok"


def test_ttl_expires_entries(cache: Cache, keys: CacheKeys) -> None:
    short, forever = keys.key("t", 1, "short"), keys.key("t", 1, "forever")
    cache.set(short, b"x", ttl_seconds=1)
    cache.set_many({forever: b"y"}, ttl_seconds=0)
    assert cache.get(short) == b"x"
    time.sleep(2.1)  # Memcached's clock has one-second resolution
    assert cache.get(short) is None
    assert cache.get_many([short, forever]) == {forever: b"y"}
