"""Preprocessor consumers on the embedded store: idempotency, point-in-time examples, erasure, poison."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from scalerec_adapters.bus import Message
from scalerec_adapters.cache import CacheKeys
from scalerec_adapters.embedded.memory_cache import MemoryCache
from scalerec_adapters.embedded.sqlite_bus import SqliteEventBus
from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_events.labels import is_conversion
from scalerec_events.models import Context, ErasureRequest, Event, EventType, Item, TrainingExample
from scalerec_events.topics import Topic, topic_name
from scalerec_features import CONTEXT_FIELDS, context_features
from scalerec_preprocessor.consumers.erasure import ErasureConsumer
from scalerec_preprocessor.consumers.events import EventsConsumer, example_json
from scalerec_preprocessor.consumers.items import ItemsConsumer
from scalerec_storage import records as r
from scalerec_storage import schema as s

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)


def _msg(topic: str, payload: bytes, offset: int, ingested: datetime | None = None) -> Message:
    at = int(ingested.timestamp() * 1000) if ingested else 0  # the bus's append time (0: unknown)
    return Message(topic=topic, partition=0, offset=offset, key=b"k", value=payload, timestamp_ms=at)


def _events(
    user: str, items: list[str], start: int = 0, *, ingested: datetime | None = None, client_ts: datetime | None = None
) -> list[Message]:
    """Events sent at T0 + start minutes (client time and bus time alike, unless given)."""
    out = []
    for n, item in enumerate(items):
        sent = T0 + timedelta(minutes=start + n)
        e = Event(
            event_id=f"{user}-{start + n}",
            user_id=user,
            item_id=item,
            type="view",
            timestamp=client_ts or sent,
        )
        out.append(_msg(topic_name(Topic.EVENTS_RAW), e.model_dump_json().encode(), start + n, ingested or sent))
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
    events = [(Event.model_validate_json(m.value), m.timestamp_ms) for m in batch]
    world.events._write(events)  # the writes happened, then the process died before _finish
    await world.events.handle(batch)  # redelivered
    assert r.count_interactions(world.store) == 2
    assert sum(r.item_scores(world.store).values()) == 2.0


async def test_index_rows_of_an_earlier_version_still_mark_their_events_done(world: World) -> None:
    """Index rows are one cell (m:at) now; rows written with m:row as well must still dedupe."""
    old, new = _events("u1", ["a"]), _events("u1", ["b"], start=1)
    ingested = old[0].timestamp_ms
    row = s.interaction_key("u1", ingested, "u1-0")
    world.store.put(s.EVENT_INDEX, s.event_index_key("u1", "u1-0"), {b"m:row": row, b"m:at": b"%d" % ingested})
    await world.events.handle(old + new)
    assert world.events.stored == 1 and world.events.duplicates == 1
    assert world.store.get(s.EVENT_INDEX, s.event_index_key("u1", "u1-1")) == {b"m:at": b"%d" % new[0].timestamp_ms}


async def test_examples_see_only_the_past(world: World) -> None:
    # Out of order delivery: the later events first.
    await world.events.handle(_events("u1", ["c", "d"], start=2))
    await world.events.handle(_events("u1", ["a", "b"], start=0))
    examples = {x.item_id: x for x in r.scan_examples(world.store)}
    assert examples["a"].history == []
    assert examples["b"].history == ["a"]
    assert examples["d"].history == ["c"] or examples["d"].history == ["a", "b", "c"]
    assert r.recent_history(world.store, "u1", 10)[-1].item_id == "d"


async def test_the_memo_of_parsed_timelines_stays_within_its_bound_and_changes_no_example(
    world: World, tmp_path: Path
) -> None:
    small = EventsConsumer(
        SqliteStore(tmp_path / "small.db"),
        MemoryCache(),
        world.keys,
        world.bus.producer(),
        history_len=50,
        cache_ttl=60,
        examples_topic=topic_name(Topic.EXAMPLES),
        memo_entries=5,
    )
    small.store.ensure_tables(s.tables())
    users = [f"u{n}" for n in range(4)]
    for part in range(3):  # each user's next events start from the timeline the last batch cached
        batch = [m for u in users for m in _events(u, [f"{u}-i{part}-{k}" for k in range(2)], start=part * 10)]
        await world.events.handle(batch)
        await small.handle(batch)
        assert small.memo_entries_held <= 5
    assert world.events.memo_entries_held == 4 * 6  # the default bound holds them all
    examples = [sorted(ex.model_dump_json() for ex in r.scan_examples(c.store)) for c in (world.events, small)]
    assert len(examples[0]) == 4 * 6 and examples[0] == examples[1]


async def test_a_partition_handed_to_another_process_and_back_is_not_served_from_a_stale_cache(
    world: World,
) -> None:
    """WORKERS > 1 on embedded backends: each process has its own in-process cache of the timelines it
    wrote.  Process A consumes u1's partition, B takes it over (a rebalance) and writes u1's next events,
    A gets it back: A's cached timeline lacks B's events, so A must not build examples from it."""
    a = world.events
    b = EventsConsumer(
        world.store,
        MemoryCache(),  # B's own in-process cache
        world.keys,
        world.bus.producer(),
        history_len=50,
        cache_ttl=60,
        examples_topic=topic_name(Topic.EXAMPLES),
    )
    await a.handle(_events("u1", ["a", "b"], start=0))  # offsets 0-1
    await b.handle(_events("u1", ["c", "d"], start=2))  # offsets 2-3, by the other process
    await a.handle(_events("u1", ["e"], start=4))  # offset 4: back to A, past where it stopped
    examples = {x.item_id: x.history for x in r.scan_examples(world.store)}
    assert examples["e"] == ["a", "b", "c", "d"]
    assert [h.item_id for h in r.cached_history(world.store, world.cache, world.keys, "u1", 10)[0]] == list("abcde")
    # A re-delivered batch (it resumes before where A stopped) keeps the cache: nothing was missed.
    world.cache.set("marker", b"1")
    await a.handle(_events("u1", ["e"], start=4))
    assert world.cache.get("marker") == b"1"


@pytest.mark.parametrize("etype", list(EventType))
@pytest.mark.parametrize("value", [None, 4.0, 2.5])
@pytest.mark.parametrize("context", [None, {"device": "mobile", "locale": "en-US", "session_id": "s-1"}])
def test_example_json_is_the_training_examples_own_dump(etype: EventType, value: float | None, context: Any) -> None:
    if etype is EventType.RATING and value is None:
        value = 5.0  # a rating needs its value
    e = Event(
        event_id="e-1",
        user_id="u-1",
        item_id="i-1",
        type=etype,
        value=value,
        timestamp=T0,
        **({"context": context} if context else {}),
    )
    for history, features in (([], None), (["a", "b"], [7, 3]), (["a"], [7, 3, 11, 12])):
        fast = example_json(e, e.ts_ms + 5, history, features)
        category, price = features[:2] if features else (0, 0)
        model = TrainingExample(
            event_id=e.event_id,
            user_id=e.user_id,
            item_id=e.item_id,
            type=e.type,
            ts_ms=e.ts_ms + 5,
            value=e.value,
            history=history,
            context=dict(
                zip(CONTEXT_FIELDS, context_features(e.ts_ms + 5, e.context.device, e.context.locale), strict=True)
            ),
            item={"category": category, "price_bucket": price},
            label_click=int(etype is not EventType.VIEW),
            label_conversion=int(is_conversion(etype, value)),
        )
        assert fast == model.model_dump_json().encode()
        assert TrainingExample.model_validate_json(fast) == model


def test_cached_histories_decode_to_what_was_encoded() -> None:
    history = [r.HistoryEntry("i-1", 1, "view", "e-1", ingest_ms=99), r.HistoryEntry('i "2"', 2, "purchase", "e/2")]
    raw = r.encode_history(history)
    assert raw == b'[["i-1",1,"view","e-1"],["i \\"2\\"",2,"purchase","e/2"]]'
    assert [r.HistoryEntry.from_list(x) for x in json.loads(raw)] == [h._replace(ingest_ms=0) for h in history]


async def test_hot_history_lands_in_the_cache(world: World) -> None:
    await world.events.handle(_events("u2", ["x", "y"]))
    history, source = r.cached_history(world.store, world.cache, world.keys, "u2", 10)
    assert source == "cache" and [h.item_id for h in history] == ["x", "y"]


async def test_poison_messages_are_reported_not_fatal(world: World) -> None:
    batch = [*_events("u1", ["a"]), _msg(topic_name(Topic.EVENTS_RAW), b"{not json", 9)]
    result = await world.events.handle(batch)
    assert len(result.poison) == 1 and "invalid event" in result.poison[0][1]
    assert r.count_interactions(world.store) == 1


async def test_a_purchase_written_while_an_erasure_runs_stays_in_the_rebuilt_profile(world: World) -> None:
    """The user comes back during the erasure: a batch of purchases ingested after the tombstone lands
    between the erasure's scan of the interactions and its delete of the profile.  The profile it
    rebuilds must still hold those purchases (they are not erased, and the ranker must never
    recommend them again)."""
    await world.events.handle(_events("u1", ["a", "b"]))
    tombstone = int((T0 + timedelta(hours=1)).timestamp() * 1000)
    back = Event(
        event_id="u1-back", user_id="u1", item_id="bought-later", type="purchase", timestamp=T0 + timedelta(hours=2)
    )
    real_delete = world.store.delete
    raced: list[bool] = []

    def delete_racing_a_batch(table: str, row: bytes, columns: list[bytes] | None = None) -> None:
        if table == s.PROFILES and not raced:  # the batch lands right before the profile is deleted
            raced.append(True)
            world.events._finish(world.events._write([(back, tombstone + 1000)]))
        real_delete(table, row, columns)

    world.store.delete = delete_racing_a_batch  # type: ignore[method-assign]
    r.erase_user(world.store, world.cache, world.keys, "u1", tombstone)
    world.store.delete = real_delete  # type: ignore[method-assign]
    assert raced
    assert r.purchased_items(world.store, "u1") == {"bought-later"}
    assert [h.event_id for h in r.recent_history(world.store, "u1", 10)] == ["u1-back"]


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


async def test_an_item_updated_again_and_again_is_in_the_fresh_index_once(world: World) -> None:
    """Without created_at each upsert added a row "created now" (three updates, three rows), an unavailable
    item kept its rows, and a nightly catalogue sync would make every item fresh."""
    consumer = ItemsConsumer(world.store)

    async def upsert(n: int, **fields: object) -> None:
        item = Item(item_id="ifresh", category="hats", **fields)  # type: ignore[arg-type]
        await consumer.handle([_msg(topic_name(Topic.ITEMS), item.model_dump_json().encode(), n)])

    older = Item(item_id="iold", category="hats", created_at=T0)
    await consumer.handle([_msg(topic_name(Topic.ITEMS), older.model_dump_json().encode(), 0)])
    for n in range(3):
        await upsert(n + 1, title=f"hat {n}")
    assert r.fresh_items(world.store, 10) == ["ifresh", "iold"]
    await upsert(5, created_at=T0 - timedelta(days=1))  # the shop says when it was created: moved, not copied
    assert r.fresh_items(world.store, 10) == ["iold", "ifresh"]
    await upsert(6, available=False)
    assert r.fresh_items(world.store, 10) == ["iold"]
    await upsert(7)  # available again: back once, still created when the shop said
    assert r.fresh_items(world.store, 10) == ["iold", "ifresh"]


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


async def _erase(world: World, user: str, at: datetime) -> None:
    req = ErasureRequest(request_id=f"r-{user}", user_id=user, requested_at=at)
    await ErasureConsumer(world.store, world.cache, world.keys).handle(
        [_msg(topic_name(Topic.ERASURE), req.model_dump_json().encode(), 0, at)]
    )


def _everything_of(world: World, user: str) -> dict[str, int]:
    """Rows and cache entries of ``user`` anywhere in the store and cache."""
    prefix = s.user_prefix(user)
    return {
        "interactions": sum(1 for _ in world.store.scan(s.INTERACTIONS, prefix=prefix)),
        "examples": sum(1 for _ in world.store.scan(s.EXAMPLES, prefix=prefix)),
        "index": sum(1 for _ in world.store.scan(s.EVENT_INDEX, prefix=prefix)),
        "profile": len(world.store.get(s.PROFILES, s.profile_key(user))),
        "cache": len(world.cache.get_many(r.user_cache_keys(world.keys, user))),
    }


async def test_tombstones_compare_with_ingest_time_not_the_clients_timestamp(world: World) -> None:
    erased_at = T0 + timedelta(hours=1)
    # Ingested before the erasure, with a client clock 9 minutes ahead of it: erased.
    await world.events.handle(_events("u1", ["a"], start=50, client_ts=erased_at + timedelta(minutes=9)))
    await _erase(world, "u1", erased_at)
    assert r.count_interactions(world.store, "u1") == 0
    # Re-delivered after the erasure (ingested before it): still dropped.
    await world.events.handle(_events("u1", ["a"], start=50, client_ts=erased_at + timedelta(minutes=9)))
    assert r.count_interactions(world.store, "u1") == 0
    # Ingested after the erasure, with an old client timestamp: the user came back; kept.
    await world.events.handle(_events("u1", ["b"], start=70, client_ts=T0))
    assert [h.item_id for h in r.recent_history(world.store, "u1", 10)] == ["b"]
    example = next(x for x in r.scan_examples(world.store) if x.user_id == "u1")
    assert example.history == []  # nothing of the erased life leaks into the new one
    # A second request for the same time changes nothing of what came after it.
    await _erase(world, "u1", erased_at)
    assert r.count_interactions(world.store, "u1") == 1


async def test_an_erasure_during_a_batch_cannot_leave_anything_behind(world: World) -> None:
    """The batch reads tombstones (none), the erasure runs to the end, then the batch writes: the
    check after the writes erases what the batch re-created and asks for the batch to run again."""
    from scalerec_adapters.worker import RetryLater

    await world.events.handle(_events("u1", ["a", "b"]))
    batch = _events("u1", ["c", "d"], start=2) + _events("u9", ["c"], start=2)
    original = r.erased_at

    def erase_between_read_and_write(store: object, users: list[str]) -> dict[str, int]:
        seen = original(world.store, users)
        r.erased_at = original  # once: the read before the writes
        r.erase_user(world.store, world.cache, world.keys, "u1", int((T0 + timedelta(hours=1)).timestamp() * 1000))
        return seen

    r.erased_at = erase_between_read_and_write  # type: ignore[assignment]
    try:
        with pytest.raises(RetryLater):
            await world.events.handle(batch)
    finally:
        r.erased_at = original
    assert _everything_of(world, "u1") == dict.fromkeys(("interactions", "examples", "index", "profile", "cache"), 0)
    await world.events.handle(batch)  # the worker runs the batch again
    assert _everything_of(world, "u1")["interactions"] == 0
    assert r.count_interactions(world.store, "u9") == 1
    assert sum(r.item_scores(world.store).values()) == 1.0


async def test_the_same_event_id_under_two_users_is_two_events(world: World) -> None:
    def event(user: str) -> Message:
        e = Event(event_id="same", user_id=user, item_id="i", type="click", timestamp=T0)
        return _msg(topic_name(Topic.EVENTS_RAW), e.model_dump_json().encode(), 0, T0)

    await world.events.handle([event("u1"), event("u2")])
    await world.events.handle([event("u2"), event("u1")])  # re-delivered
    assert r.count_interactions(world.store, "u1") == r.count_interactions(world.store, "u2") == 1
    assert r.item_scores(world.store) == {"i": 2 * r.TYPE_WEIGHTS[EventType.CLICK]}
    await _erase(world, "u1", T0 + timedelta(hours=1))
    assert r.item_scores(world.store) == {"i": r.TYPE_WEIGHTS[EventType.CLICK]}
    await world.events.handle([event("u2")])  # u2's index row survived u1's erasure: still a duplicate
    assert r.count_interactions(world.store, "u2") == 1 and world.events.duplicates == 3


async def test_ids_with_the_old_separator_cannot_reach_another_users_rows(world: World) -> None:
    """Row keys escape their parts: erasing or reading ``u`` never touches ``u|x`` (same salt bucket
    chosen on purpose), although the wire model refuses such ids anyway."""
    victim = next(f"u|{n}" for n in range(1000) if s.salt(f"u|{n}") == s.salt("u"))
    for user in ("u", victim):
        e = Event.model_construct(
            event_id="e1", user_id=user, item_id="i", type=EventType.VIEW, timestamp=T0, value=None, context=Context()
        )
        world.events._write([(e, int(T0.timestamp() * 1000))])
    assert [h.event_id for h in r.recent_history(world.store, "u", 10)] == ["e1"]
    r.erase_user(world.store, world.cache, world.keys, "u", int((T0 + timedelta(hours=1)).timestamp() * 1000))
    assert r.count_interactions(world.store, "u") == 0
    assert r.count_interactions(world.store, victim) == 1
    assert s.unescape(s.escape(victim)) == victim and b"|" not in s.escape(victim)
