"""Row keys on the real HBase: a crafted user id cannot read or delete another user's rows.

The wire model refuses these ids (``ID_PATTERN``: 422 at the collector); this shows the storage
layer does not depend on that: every id is escaped in row keys, so the old separator ``|``, control,
bidi and zero-width characters, or an id that looks like an escape, stay inside their own rows.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from scalerec_adapters.cache import CacheKeys
from scalerec_adapters.embedded.memory_cache import MemoryCache
from scalerec_adapters.embedded.sqlite_bus import SqliteEventBus
from scalerec_adapters.hbase_store import HBaseStore
from scalerec_events.models import Context, Event, EventType
from scalerec_events.topics import Topic, topic_name
from scalerec_preprocessor.consumers.events import EventsConsumer
from scalerec_storage import records as r
from scalerec_storage import schema as s

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
AT = int(T0.timestamp() * 1000)


def _same_salt(base: str, pattern: str) -> str:
    """An id of ``pattern`` that lands in the same salt bucket (HBase region) as ``base``."""
    return next(pattern.format(n) for n in range(10_000) if s.salt(pattern.format(n)) == s.salt(base))


async def test_crafted_ids_stay_in_their_own_rows_on_hbase(shared_hbase: tuple[str, int], tmp_path: Path) -> None:
    host, port = shared_hbase
    store = HBaseStore(host, port, namespace=f"it{uuid.uuid4().hex[:10]}")
    bus = SqliteEventBus(tmp_path / "bus.db")  # carries the examples; not under test here
    await bus.start()
    target = "u"
    others = [
        _same_salt(target, "u|{}"),  # the old separator: under the old keys u's prefix matched these rows
        _same_salt(target, "u|\u200b{}"),  # zero-width space
        _same_salt(target, "u\u202e{}"),  # right-to-left override
        _same_salt(target, "u\x00{}"),  # NUL
        _same_salt(target, "u%7C{}"),  # looks like an escaped separator
    ]
    try:
        store.ensure_tables(s.tables())
        cache, keys = MemoryCache(), CacheKeys("it")
        consumer = EventsConsumer(store, cache, keys, bus.producer(), 50, 60, examples_topic=topic_name(Topic.EXAMPLES))
        for user in [target, *others]:
            e = Event.model_construct(
                event_id="e1|x",
                user_id=user,
                item_id="i|1",
                type=EventType.PURCHASE,
                timestamp=T0,
                value=None,
                context=Context(),
            )
            plan = consumer._write([(e, AT)])
            consumer._finish(plan)
        for user in [target, *others]:
            assert [(h.item_id, h.event_id) for h in r.recent_history(store, user, 10)] == [("i|1", "e1|x")], user
            assert r.purchased_items(store, user) == {"i|1"}
        assert r.item_scores(store) == {"i|1": 6 * r.TYPE_WEIGHTS[EventType.PURCHASE]}

        counts = r.erase_user(store, cache, keys, target, AT + 1)
        assert counts["interactions"] == 1 and counts["examples"] == 1 and counts["index"] == 1
        assert r.recent_history(store, target, 10) == []
        for user in others:
            assert len(r.recent_history(store, user, 10)) == 1, f"{user!r} lost rows to the erasure of {target!r}"
            assert r.purchased_items(store, user) == {"i|1"}
            assert sum(1 for _ in store.scan(s.EVENT_INDEX, prefix=s.user_prefix(user))) == 1
        assert r.item_scores(store) == {"i|1": 5 * r.TYPE_WEIGHTS[EventType.PURCHASE]}
        assert r.count_rows(store, s.EXAMPLES) == 5
    finally:
        store.drop_tables()
        store.close()
        await bus.close()
