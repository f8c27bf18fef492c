"""<DEPLOYMENT>.users.erasure.v1 → forget an erased user in this process's cache.

With an in-process cache (``CACHE_URL=memory://``) every ranker replica holds its own copy of users'
histories and purchases, which the preprocessor cannot reach: each replica reads erasure requests in
a consumer group of its own (like model announcements) and drops the user's entries once the
preprocessor has finished erasing the store (the tombstone's ``r:done``): dropping them earlier would
let the next request refill the cache from rows that are about to go.  Until then the request is
retried (``RetryLater``), for at most ``WAIT_FOR_STORE_S`` after the request (a preprocessor that is
down longer must not hold this replica's erasures back for ever: the entries are dropped then, and
the cache's TTL bounds what a refill could bring back).  A shared Memcached is purged on every node by the preprocessor's erasure
itself; a replica has nothing of its own to drop there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from scalerec_adapters.bus import Message
from scalerec_adapters.cache import Cache, CacheKeys
from scalerec_adapters.store import WideColumnStore
from scalerec_adapters.worker import BatchResult, RetryLater, parse_batch
from scalerec_core.logging import user_ref
from scalerec_events.models import ErasureRequest
from scalerec_storage import records as r

log = logging.getLogger(__name__)

WAIT_FOR_STORE_S = 600.0


class ErasureConsumer:
    def __init__(self, store: WideColumnStore, cache: Cache, keys: CacheKeys) -> None:
        self.store = store
        self.cache = cache
        self.keys = keys
        self.forgotten = 0

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        parsed, result = parse_batch(messages, ErasureRequest, "erasure request")
        if not self.cache.in_process:
            return result
        wanted: dict[str, int] = {}
        for _, request in parsed:
            at = int(request.requested_at.timestamp() * 1000)
            wanted[request.user_id] = max(at, wanted.get(request.user_id, at))
        users = sorted(wanted)
        done = await asyncio.to_thread(r.erasure_done, self.store, users)
        now_ms = time.time() * 1000
        pending = [u for u in users if done.get(u, -1) < wanted[u] and now_ms - wanted[u] < WAIT_FOR_STORE_S * 1000]
        if pending:
            raise RetryLater(f"the store's erasure of {len(pending)} user(s) has not finished yet")
        keys = [k for u in users for k in r.user_cache_keys(self.keys, u)]
        await asyncio.to_thread(self.cache.purge, keys)
        for user_id in users:
            log.info("forgot erased user %s in the ranker's cache", user_ref(user_id))
        self.forgotten += len(users)
        return result
