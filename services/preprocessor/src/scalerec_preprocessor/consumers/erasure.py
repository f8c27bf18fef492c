"""<DEPLOYMENT>.users.erasure.v1 → remove a user's data from the store, the counters, examples and the cache.

The request's ``requested_at`` (when the collector accepted it) is the tombstone: everything of the
user the bus accepted until then goes.  A cache node that does not confirm the delete makes the
handler raise, so the request is retried (the store part is idempotent) instead of acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from scalerec_adapters.bus import Message
from scalerec_adapters.cache import Cache, CacheKeys
from scalerec_adapters.store import WideColumnStore
from scalerec_adapters.worker import BatchResult, parse_batch
from scalerec_core.logging import user_ref
from scalerec_events.models import ErasureRequest
from scalerec_storage import records as r

log = logging.getLogger(__name__)


class ErasureConsumer:
    def __init__(self, store: WideColumnStore, cache: Cache, keys: CacheKeys) -> None:
        self.store = store
        self.cache = cache
        self.keys = keys
        self.erased = 0

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        parsed, result = parse_batch(messages, ErasureRequest, "erasure request")
        for _, request in parsed:
            at_ms = int(request.requested_at.timestamp() * 1000)
            counts = await asyncio.to_thread(r.erase_user, self.store, self.cache, self.keys, request.user_id, at_ms)
            log.info("erased user %s (request %s): %s", user_ref(request.user_id), request.request_id, counts)
            self.erased += 1
        return result
