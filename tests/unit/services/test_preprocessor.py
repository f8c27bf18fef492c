"""Preprocessor consumers on the embedded store: idempotency, point-in-time examples, erasure, poison."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from scalerec_adapters.bus import Message
from scalerec_adapters.cache import CacheKeys
from scalerec_adapters.embedded.memory_cache import MemoryCache
from scalerec_adapters.embedded.sqlite_bus import SqliteEventBus
from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_events.models import ErasureRequest, Event, Item
from scalerec_events.topics import Topic, topic_name
from scalerec_preprocessor.consumers.erasure import ErasureConsumer
from scalerec_preprocessor.consumers.events import EventsConsumer
from scalerec_preprocessor.consumers.items import ItemsConsumer
from scalerec_storage import records as r
from scalerec_storage import schema as s

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)


def _msg(topic: str, payload: bytes, offset: int) -> Message:
    return Message(topic=topic, partition=0, offset=offset, key=b"k", value=payload)


def _events(user: str, items: list[str], start: int = 0) -> list[Message]:
    out = []
    for n, item in enumerate(items):
        e = Event(
            event_id=f"{user}-{start + n}",
            user_id=user,
            item_id=item,
            type="view",
            timestamp=T0 + timedelta(minutes=start + n),
        )
        out.append(_msg(topic_name(Topic.EVENTS_RAW), e.model_dump_json().encode(), start + n))
    return out


class World:
    def __init__(self, tmp: Path, bus: SqliteEventBus) -> None:
        self.store = SqliteStore(tmp / "store.db")
        self.store.ensure_tables(s.tables())
        self.cache = MemoryCache()
        self.keys = CacheKeys("test")
        self.bus = bus
        self.events = EventsConsumer(
            self.store,
            self.cache,
            self.keys,
            bus.producer(),
            history_len=50,
            cache_ttl=60,
            examples_topic=topic_name(Topic.EXAMPLES),
        )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    bus = SqliteEventBus(tmp_path / "bus.db")
    await bus.start()
    yield World(tmp_path, bus)
    await bus.close()


async def test_a_redelivered_batch_changes_nothing(world: World) -> None:
    batch = _events("u1", ["a", "b", "c"])
    await world.events.handle(batch)
    before = r.item_scores(world.store)
    await world.events.handle(batch)  # at-least-once: the same messages again
    assert r.count_interactions(world.store) == 3
    assert r.item_scores(world.store) == before
    assert world.events.stored == 3 and world.events.duplicates == 3


async def test_a_crash_before_the_dedupe_index_is_safe(world: World) -> None:
    batch = _events("u1", ["a", "b"])
    events = [Event.model_validate_json(m.value) for m in batch]
    world.events._write(events)  # the writes happened, then the process died before _finish
    await world.events.handle(batch)  # redelivered
    assert r.count_interactions(world.store) == 2
    assert sum(r.item_scores(world.store).values()) == 2.0


async def test_examples_see_only_the_past(world: World) -> None:
    # Out of order delivery: the later events first.
    await world.events.handle(_events("u1", ["c", "d"], start=2))
    await world.events.handle(_events("u1", ["a", "b"], start=0))
    examples = {x.item_id: x for x in r.scan_examples(world.store)}
    assert examples["a"].history == []
    assert examples["b"].history == ["a"]
    assert examples["d"].history == ["c"] or examples["d"].history == ["a", "b", "c"]
    assert r.recent_history(world.store, "u1", 10)[-1].item_id == "d"


async def test_hot_history_lands_in_the_cache(world: World) -> None:
    await world.events.handle(_events("u2", ["x", "y"]))
    history, source = r.cached_history(world.store, world.cache, world.keys, "u2", 10)
    assert source == "cache" and [h.item_id for h in history] == ["x", "y"]


async def test_poison_messages_are_reported_not_fatal(world: World) -> None:
    batch = [*_events("u1", ["a"]), _msg(topic_name(Topic.EVENTS_RAW), b"{not json", 9)]
    result = await world.events.handle(batch)
    assert len(result.poison) == 1 and "invalid event" in result.poison[0][1]
    assert r.count_interactions(world.store) == 1


async def test_erasure_removes_everything_and_drops_late_events(world: World) -> None:
    await world.events.handle(_events("u1", ["a", "b"]))
    await world.events.handle(_events("u9", ["a"]))
    erasure = ErasureConsumer(world.store, world.cache, world.keys)
    req = ErasureRequest(request_id="r1", user_id="u1", requested_at=T0 + timedelta(hours=1))
    await erasure.handle([_msg(topic_name(Topic.ERASURE), req.model_dump_json().encode(), 0)])
    assert r.count_interactions(world.store, "u1") == 0
    assert r.count_interactions(world.store, "u9") == 1
    assert all(x.user_id != "u1" for x in r.scan_examples(world.store))
    assert sum(r.item_scores(world.store).values()) == 1.0
    # An event from before the erasure that was still in flight is not resurrected.
    await world.events.handle(_events("u1", ["z"], start=30))
    assert r.count_interactions(world.store, "u1") == 0


async def test_items_go_to_the_catalogue_and_fresh_index(world: World) -> None:
    consumer = ItemsConsumer(world.store)
    items = [
        Item(item_id="i1", category="shoes", price=50, title="Trail runner", created_at=T0),
        Item(item_id="i2", category="hats", created_at=T0 + timedelta(days=1)),
    ]
    await consumer.handle([_msg(topic_name(Topic.ITEMS), i.model_dump_json().encode(), n) for n, i in enumerate(items)])
    assert set(r.get_items(world.store, ["i1", "i2", "nope"])) == {"i1", "i2"}
    assert r.fresh_items(world.store, 10) == ["i2", "i1"]


async def test_every_purchase_is_remembered_beyond_the_recent_history(world: World) -> None:
    buy = Event(event_id="buy-1", user_id="u5", item_id="bought-long-ago", type="purchase", timestamp=T0)
    await world.events.handle([_msg(topic_name(Topic.EVENTS_RAW), buy.model_dump_json().encode(), 0)])
    # Far more than history_len later events push the purchase out of the recent history...
    await world.events.handle(_events("u5", [f"v{n}" for n in range(60)], start=1))
    assert "bought-long-ago" not in {h.item_id for h in r.recent_history(world.store, "u5", 50)}
    # ...but not out of the set the ranker excludes.
    assert r.purchased_items(world.store, "u5") == {"bought-long-ago"}


async def test_examples_carry_the_items_content_features(world: World) -> None:
    from scalerec_features import item_feature_vector

    item = Item(item_id="shoe", category="running shoes", price=89.0, title="Trail runner mesh")
    await ItemsConsumer(world.store).handle([_msg(topic_name(Topic.ITEMS), item.model_dump_json().encode(), 0)])
    await world.events.handle(_events("u7", ["shoe"]))
    example = next(x for x in r.scan_examples(world.store) if x.item_id == "shoe")
    expected = item_feature_vector(item.category, item.price, item.title, item.text)
    assert example.item == {"category": expected[0], "price_bucket": expected[1]}
