"""Hot-data cache interface (Memcached's model) and the key scheme every cache user shares.

A cache is never the source of truth: a miss or an unreachable cache means
"read the store", never an error to the caller.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence


class CacheUnavailable(ConnectionError):
    """A delete that must reach every node (an erasure) did not: the caller retries, it is never ignored."""


class Cache(ABC):
    # True when a call never leaves the process (no I/O): callers may use it on the event loop.
    in_process: bool = False

    @abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Hits only."""

    @abstractmethod
    def set(self, key: str, value: bytes, ttl_seconds: int = 0) -> None:
        """``ttl_seconds`` 0 means no expiry (but the cache may still evict)."""

    @abstractmethod
    def set_many(self, items: Mapping[str, bytes], ttl_seconds: int = 0) -> None: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.delete(key)

    def purge(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` wherever they may be, or raise :class:`CacheUnavailable`.

        Unlike :meth:`delete_many` (best effort: a cache is never the source of truth) this is for
        data that must go (erasure).  A multi-node cache deletes on every node, since a key written
        while its node was away lives on another one.
        """
        self.delete_many(keys)

    def healthy(self) -> bool:
        return True

    def forget_local(self) -> None:
        """Drop what only this process holds (an in-process cache's entries); a shared cache keeps its
        entries, which other processes wrote and read."""
        return None

    @abstractmethod
    def close(self) -> None: ...


# What Memcached's text protocol cannot carry in a key (checked once per key: on the request path).
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")


class CacheKeys:
    """``<deployment>:<kind>:v<version>:<id>`` — bump a kind's version to invalidate all of it at once."""

    def __init__(self, deployment: str) -> None:
        self._prefix = deployment

    def key(self, kind: str, version: int, ident: str) -> str:
        # Memcached keys: <= 250 bytes, no spaces or control characters.
        raw = f"{self._prefix}:{kind}:v{version}:{ident}"
        if len(raw) > 240 or _UNSAFE.search(raw):
            import hashlib

            raw = f"{self._prefix}:{kind}:v{version}:h:{hashlib.sha1(ident.encode()).hexdigest()}"
        return raw
