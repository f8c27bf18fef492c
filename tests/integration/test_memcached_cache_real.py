"""MemcachedCache against real nodes: keys spread over both, and a dead node is a miss."""

from __future__ import annotations

import time
import uuid

import pytest
from pymemcache.client.base import Client
from scalerec_adapters.factory import make_cache
from scalerec_adapters.memcached_cache import MemcachedCache

from .conftest import HOST, PrivateStack

pytestmark = [pytest.mark.integration]


def _ports(stack: PrivateStack) -> list[int]:
    return [int(p) for p in stack.env["SCALEREC_MEMCACHED_PORTS"].split()]


def test_keys_spread_over_both_nodes(shared_memcached: list[tuple[str, int]]) -> None:
    prefix = f"it-{uuid.uuid4().hex[:8]}:"
    cache = MemcachedCache(shared_memcached, key_prefix=prefix)
    try:
        cache.set_many({f"k{i}": b"v%d" % i for i in range(200)}, ttl_seconds=60)
        per_node = []
        for host, port in shared_memcached:
            node = Client((host, port))
            per_node.append(len(node.get_many([f"{prefix}k{i}" for i in range(200)])))
            node.close()
        assert sum(per_node) == 200 and all(n > 30 for n in per_node), per_node
    finally:
        cache.close()


def test_a_dead_node_is_a_miss_and_its_return_is_noticed(private_memcached: PrivateStack) -> None:
    ports = _ports(private_memcached)
    cache = MemcachedCache([(HOST, p) for p in ports], dead_timeout_s=1)
    try:
        items = {f"k{i}": b"v%d" % i for i in range(100)}
        cache.set_many(items)
        assert cache.get_many(list(items)) == items

        private_memcached.down(f"memcached-{ports[0]}")
        started = time.monotonic()
        hits = cache.get_many(list(items))
        assert 0 < len(hits) < 100, "the second node's keys survive, the first node's are misses"
        assert cache.get("k-new") is None
        cache.set("k-new", b"x")  # no error: lands on the live node or is dropped
        assert time.monotonic() - started < 5, "a dead node must not stall callers"
        assert not cache.healthy()

        private_memcached.up(f"memcached-{ports[0]}")  # back, empty, as after a real restart
        assert cache.healthy()
        # The ring takes the node back after dead_timeout; a stale pooled socket may cost one more
        # miss. What a user notices: within seconds, writes stick on every node again.
        deadline = time.monotonic() + 10
        while True:
            cache.set_many(items)
            if cache.get_many(list(items)) == items or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert cache.get_many(list(items)) == items
    finally:
        cache.close()


def test_factory_url_and_odd_keys(shared_memcached: list[tuple[str, int]]) -> None:
    url = "memcached://" + ",".join(f"{h}:{p}" for h, p in shared_memcached)
    cache = make_cache(url)
    try:
        assert isinstance(cache, MemcachedCache)
        for key in (f"café {uuid.uuid4()}", "x" * 400, f"tab\tand\nnewline {uuid.uuid4()}"):
            cache.set(key, b"\x00\xff")
            assert cache.get(key) == b"\x00\xff"
            cache.delete(key)
            assert cache.get(key) is None
    finally:
        cache.close()
