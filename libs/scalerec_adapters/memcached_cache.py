"""Memcached across several nodes (pymemcache ``HashClient``): the production :class:`Cache`.

Why it is built this way:

* **Placement** is rendezvous (highest-random-weight) hashing, pymemcache's default: like a
  consistent-hash ring, adding or losing a node moves only that node's share of the keys, so a
  node restart does not empty the whole cache.
* **A dead node is a miss, not an error** (``ignore_exc``): the cache is never the source of
  truth, so callers read the store instead.  After ``retry_attempts`` failures a node is taken
  out of the ring for ``dead_timeout`` seconds (its keys go to the live nodes meanwhile) and
  then tried again; short socket timeouts keep a dead node from stalling requests.
* **Read-your-writes**: replies are awaited (no ``noreply``), because with a connection pool a
  fire-and-forget ``set`` may still be in flight on one socket when a ``get`` for the same key
  arrives on another.
* **Any ``str`` key works**: a key Memcached would refuse (over 250 bytes, spaces, control or
  non-ASCII characters) is replaced by a SHA-1 of itself, so callers need not know the limits.
* **TTLs over 30 days** are sent as absolute Unix times, as the Memcached protocol requires.
* **Erasure reaches every node** (:meth:`MemcachedCache.purge`): a key is deleted on each node, not
  only the one the ring picks now (a key written while its node was out of the ring lives on
  another node, and the old node may still hold an older copy when it returns).  A node that does
  not answer is retried a few times; then the purge raises, so the erasure is retried later
  rather than reported done with a copy left behind.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence

from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient

from scalerec_adapters.cache import Cache, CacheUnavailable

log = logging.getLogger(__name__)

_MAX_KEY = 250
_RELATIVE_TTL_LIMIT = 30 * 24 * 3600  # Memcached reads larger expiry values as Unix timestamps


class MemcachedCache(Cache):
    """See the module docstring."""

    def __init__(
        self,
        servers: list[tuple[str, int]],
        *,
        key_prefix: str = "",
        connect_timeout_s: float = 0.5,
        timeout_s: float = 0.5,
        retry_attempts: int = 1,
        dead_timeout_s: float = 5.0,
        max_pool_size: int = 16,
        purge_attempts: int = 3,
        purge_backoff_s: float = 0.2,
    ) -> None:
        if not servers:
            raise ValueError("MemcachedCache needs at least one (host, port)")
        self.servers = [(h, int(p)) for h, p in servers]
        self.key_prefix = key_prefix
        self._connect_timeout = connect_timeout_s
        self._timeout = timeout_s
        self.purge_attempts = max(1, purge_attempts)
        self.purge_backoff_s = purge_backoff_s
        self._client = HashClient(
            self.servers,
            connect_timeout=connect_timeout_s,
            timeout=timeout_s,
            retry_attempts=retry_attempts,
            retry_timeout=0,
            dead_timeout=dead_timeout_s,
            ignore_exc=True,
            use_pooling=True,  # the client is shared by the event loop and to_thread workers
            max_pool_size=max_pool_size,
            default_noreply=False,
            allow_unicode_keys=False,
        )

    # -- keys ------------------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        if not isinstance(key, str):
            raise TypeError(f"cache key must be str, got {type(key).__name__}: {key!r:.80}")
        full = self.key_prefix + key
        if len(full) > _MAX_KEY or not full.isascii() or any(c.isspace() or ord(c) < 33 or ord(c) == 127 for c in full):
            full = f"{self.key_prefix}h:{hashlib.sha1(key.encode('utf-8', 'surrogatepass')).hexdigest()}"
        return full

    @staticmethod
    def _expire(ttl_seconds: int) -> int:
        if ttl_seconds < 0:
            raise ValueError(f"ttl_seconds must be >= 0, got {ttl_seconds}")
        ttl = int(ttl_seconds)
        return int(time.time()) + ttl if ttl > _RELATIVE_TTL_LIMIT else ttl

    @staticmethod
    def _value(value: bytes) -> bytes:
        if isinstance(value, bytes):
            return value
        if isinstance(value, bytearray | memoryview):
            return bytes(value)
        raise TypeError(f"cache value must be bytes, got {type(value).__name__}")

    # -- Cache -----------------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        value = self._client.get(self._key(key))
        return None if value is None else bytes(value)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        by_wire = {self._key(k): k for k in keys}
        found = self._client.get_many(list(by_wire))
        return {by_wire[w]: bytes(v) for w, v in found.items() if v is not None and w in by_wire}

    def set(self, key: str, value: bytes, ttl_seconds: int = 0) -> None:
        if not self._client.set(self._key(key), self._value(value), expire=self._expire(ttl_seconds)):
            log.debug("memcached set of %r not stored (node down or value too large)", key)

    def set_many(self, items: Mapping[str, bytes], ttl_seconds: int = 0) -> None:
        if not items:
            return
        expire = self._expire(ttl_seconds)
        wire = {self._key(k): self._value(v) for k, v in items.items()}
        failed = self._client.set_many(wire, expire=expire)
        if failed:
            log.debug("memcached set_many: %d of %d keys not stored", len(failed), len(wire))

    def delete(self, key: str) -> None:
        self._client.delete(self._key(key))

    def delete_many(self, keys: Sequence[str]) -> None:
        if keys:
            self._client.delete_many([self._key(k) for k in keys])

    def purge(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` on every node (see the module docstring); raise if a node never answers."""
        if not keys:
            return
        wire = [self._key(k) for k in keys]
        pending = list(self.servers)
        for attempt in range(1, self.purge_attempts + 1):
            failed: list[tuple[tuple[str, int], BaseException]] = []
            for host, port in pending:
                node = Client((host, port), connect_timeout=self._connect_timeout, timeout=self._timeout)
                try:
                    for key in wire:
                        node.delete(key, noreply=False)  # False only means "was not there"
                except Exception as exc:
                    failed.append(((host, port), exc))
                finally:
                    node.close()
            if not failed:
                return
            pending = [node for node, _ in failed]
            log.warning("memcached purge: %d node(s) did not answer (attempt %d): %s", len(failed), attempt, failed)
            if attempt < self.purge_attempts:
                time.sleep(self.purge_backoff_s * attempt)
        nodes = ", ".join(f"{h}:{p}" for h, p in pending)
        raise CacheUnavailable(f"memcached node(s) {nodes} did not confirm deleting {len(wire)} key(s)")

    def healthy(self) -> bool:
        """True when every node answers: a missing node still works (misses) but is worth an alert.

        Each node is asked on a fresh short-lived socket, so the answer does not depend on whether
        the ring has taken a node out (or not yet back in) after failures.
        """
        for host, port in self.servers:
            probe = Client((host, port), connect_timeout=self._connect_timeout, timeout=self._connect_timeout)
            try:
                probe.version()
            except Exception as exc:
                log.debug("memcached node %s:%d not healthy: %r", host, port, exc)
                return False
            finally:
                probe.close()
        return True

    def close(self) -> None:
        for client in list(self._client.clients.values()):
            try:
                client.close()
            except Exception:
                log.debug("closing a memcached client failed", exc_info=True)
