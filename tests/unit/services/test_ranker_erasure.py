"""The ranker forgets an erased user in its in-process cache, once the store's erasure has finished."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from scalerec_adapters.bus import Message
from scalerec_adapters.cache import CacheKeys
from scalerec_adapters.embedded.memory_cache import MemoryCache
from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_adapters.worker import RetryLater
from scalerec_events.models import ErasureRequest
from scalerec_ranker.consumers.erasure import ErasureConsumer
from scalerec_storage import records as r
from scalerec_storage import schema as s


async def test_the_ranker_drops_an_erased_user_after_the_store_is_erased(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    store.ensure_tables(s.tables())
    cache, keys = MemoryCache(), CacheKeys("t")
    at = datetime.now(UTC)  # a recent request: the ranker waits for the store (up to WAIT_FOR_STORE_S)
    cache.set_many({k: b"[]" for u in ("u1", "u2") for k in r.user_cache_keys(keys, u)})
    request = ErasureRequest(request_id="r1", user_id="u1", requested_at=at)
    message = Message("erasure", 0, 0, b"u1", request.model_dump_json().encode())
    consumer = ErasureConsumer(store, cache, keys)
    with pytest.raises(RetryLater):  # the preprocessor has not erased the store yet: a refill would bring it back
        await consumer.handle([message])
    assert len(cache.get_many(r.user_cache_keys(keys, "u1"))) == 3
    r.erase_user(store, MemoryCache(), keys, "u1", int(at.timestamp() * 1000))  # the preprocessor's erasure
    await consumer.handle([message])
    assert cache.get_many(r.user_cache_keys(keys, "u1")) == {}
    assert len(cache.get_many(r.user_cache_keys(keys, "u2"))) == 3


async def test_the_ranker_does_not_wait_for_ever_for_a_store_erasure(tmp_path: Path) -> None:
    """A request older than WAIT_FOR_STORE_S whose store erasure never finished (a preprocessor down
    that long) still empties this replica's cache: the replica's erasures do not block for ever."""
    store = SqliteStore(tmp_path / "store.db")
    store.ensure_tables(s.tables())
    cache, keys = MemoryCache(), CacheKeys("t")
    cache.set_many({k: b"[]" for k in r.user_cache_keys(keys, "u1")})
    old = datetime(2026, 5, 1, 12, tzinfo=UTC)
    request = ErasureRequest(request_id="r1", user_id="u1", requested_at=old)
    await ErasureConsumer(store, cache, keys).handle(
        [Message("erasure", 0, 0, b"u1", request.model_dump_json().encode())]
    )
    assert cache.get_many(r.user_cache_keys(keys, "u1")) == {}
