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


def test_purge_deletes_a_key_on_every_node_not_only_where_the_ring_points(
    shared_memcached: list[tuple[str, int]],
) -> None:
    """A key written while its node was out of the ring lives on the other node, and the first node may
    still hold an older copy when it comes back: an erasure must delete both."""
    prefix = f"it-{uuid.uuid4().hex[:8]}:"
    cache = MemcachedCache(shared_memcached, key_prefix=prefix)
    nodes = [Client(node) for node in shared_memcached]
    try:
        for node in nodes:  # a copy on each node, as the ring's history can leave it
            # Confirmed before the purge: pymemcache sends a set without waiting for its reply by default,
            # and the purge deletes over connections of its own, which memcached may serve first.
            assert node.set(f"{prefix}user-7", b"history", expire=60, noreply=False)
        cache.purge(["user-7"])
        assert [node.get(f"{prefix}user-7") for node in nodes] == [None, None]
        cache.delete("absent")  # best effort, as before
    finally:
        for node in nodes:
            node.close()
        cache.close()


def test_purge_retries_a_node_that_does_not_answer_then_raises(private_memcached: PrivateStack) -> None:
    from scalerec_adapters.cache import CacheUnavailable

    ports = _ports(private_memcached)
    cache = MemcachedCache([(HOST, p) for p in ports], purge_attempts=3, purge_backoff_s=0.05)
    try:
        cache.set("k", b"v")
        private_memcached.down(f"memcached-{ports[0]}")
        with pytest.raises(CacheUnavailable, match=str(ports[0])):
            cache.purge(["k"])  # never reported done with a node unreached
        private_memcached.up(f"memcached-{ports[0]}")
        cache.purge(["k"])  # the retry by the erasure worker succeeds once the node is back
        assert cache.get("k") is None
    finally:
        cache.close()
