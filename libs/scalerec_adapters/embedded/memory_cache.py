"""Embedded hot-data cache: an in-process dict with per-key TTL and LRU eviction.

It stands in for Memcached on one machine.  Like Memcached it is bounded (least
recently used keys go first when full) and never the source of truth, so
eviction and expiry only ever cost a store read.  Services call it from
``asyncio.to_thread`` workers as well as the event loop, hence the lock.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from scalerec_adapters.cache import Cache


class MemoryCache(Cache):
    in_process = True

    def __init__(self, max_items: int = 100_000) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.max_items = max_items
        # key -> (value, monotonic expiry or 0.0 for none); order = recency, most recent last.
        self._items: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _live(self, key: str, now: float) -> bytes | None:
        """Caller holds the lock.  Expired entries are dropped when touched (lazy expiry, like Memcached)."""
        entry = self._items.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires and expires <= now:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def _put(self, key: str, value: bytes, expires: float) -> None:
        self._items[key] = (bytes(value), expires)
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    @staticmethod
    def _expiry(ttl_seconds: int) -> float:
        if ttl_seconds < 0:
            raise ValueError(f"ttl_seconds must be >= 0, got {ttl_seconds}")
        return time.monotonic() + ttl_seconds if ttl_seconds else 0.0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._live(key, time.monotonic())

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        now = time.monotonic()
        out: dict[str, bytes] = {}
        with self._lock:
            for key in keys:
                value = self._live(key, now)
                if value is not None:
                    out[key] = value
        return out

    def set(self, key: str, value: bytes, ttl_seconds: int = 0) -> None:
        expires = self._expiry(ttl_seconds)
        with self._lock:
            self._put(key, value, expires)

    def set_many(self, items: Mapping[str, bytes], ttl_seconds: int = 0) -> None:
        expires = self._expiry(ttl_seconds)
        with self._lock:
            for key, value in items.items():
                self._put(key, value, expires)

    def delete(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def delete_many(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._items.pop(key, None)

    def forget_local(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def close(self) -> None:
        with self._lock:
            self._items.clear()
