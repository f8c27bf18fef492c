"""The preprocessor with WORKERS=2 on embedded backends: two consumer processes, one API, exact results.

The app is built as ``python -m scalerec_preprocessor`` builds it; its lifespan starts two child
processes in the same consumer groups.  Events of many users go onto the bus; one child is killed
(SIGKILL) while it works through them and is started again.  Afterwards every event is exactly one
interaction and one example, each example's point-in-time history is what one process alone computes
from the same events, and ``/v1/stats`` adds up both processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from scalerec_adapters.bus import Message, OutgoingMessage
from scalerec_adapters.cache import CacheKeys
from scalerec_adapters.embedded.memory_cache import MemoryCache
from scalerec_adapters.embedded.sqlite_bus import SqliteEventBus
from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_events.models import Event
from scalerec_events.topics import Topic
from scalerec_preprocessor.config import PreprocessorSettings
from scalerec_preprocessor.consumers.events import EventsConsumer
from scalerec_preprocessor.main import create_app
from scalerec_preprocessor.pipeline import ChildPipelines
from scalerec_storage import records as r
from scalerec_storage import schema as s

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
USERS = [f"u{n:03d}" for n in range(60)]


def _events(n: int) -> list[Event]:
    """``n`` events, round robin over the users, one minute apart: each user's in time order."""
    return [
        Event(
            event_id=f"e{i}",
            user_id=USERS[i % len(USERS)],
            item_id=f"i{(i * 7) % 40}",
            type=("view", "click", "add_to_cart", "purchase")[i % 4],
            timestamp=T0 + timedelta(minutes=i),
        )
        for i in range(n)
    ]


async def _produce(settings: PreprocessorSettings, events: list[Event]) -> None:
    bus = SqliteEventBus(settings.data_dir / "bus.db")
    await bus.start()
    try:
        producer = bus.producer()
        topic = settings.topic(Topic.EVENTS_RAW)
        for i in range(0, len(events), 100):
            chunk = events[i : i + 100]
            await producer.send_batch(
                topic, [OutgoingMessage(e.model_dump_json().encode(), e.user_id.encode()) for e in chunk]
            )
    finally:
        await bus.close()


async def _reference(tmp: Path, settings: PreprocessorSettings, events: list[Event]) -> dict[str, Any]:
    """The examples' histories of one consumer in one process over the same events, by event id."""
    store = SqliteStore(tmp / "reference.db")
    store.ensure_tables(s.tables())
    bus = SqliteEventBus(tmp / "reference-bus.db")
    await bus.start()
    consumer = EventsConsumer(
        store,
        MemoryCache(),
        CacheKeys("ref"),
        bus.producer(),
        settings.history_len,
        60,
        examples_topic=settings.topic(Topic.EXAMPLES),
    )
    topic = settings.topic(Topic.EVENTS_RAW)
    await consumer.handle(
        [Message(topic, 0, i, e.user_id.encode(), e.model_dump_json().encode()) for i, e in enumerate(events)]
    )
    await bus.close()
    out = {x.event_id: x.history for x in r.scan_examples(store)}
    store.close()
    return out


def _wait(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def test_two_consumer_processes_store_every_event_once_and_survive_a_kill(tmp_path: Path) -> None:
    settings = PreprocessorSettings(data_dir=tmp_path / "data", auth="disabled", workers=2, poll_max_records=50)
    settings.data_dir.mkdir()
    events = _events(3000)
    with TestClient(create_app(settings)) as client:
        children = client.app.state.pipeline  # type: ignore[attr-defined]
        assert isinstance(children, ChildPipelines) and children.count == 2

        def stats() -> dict[str, Any]:
            answer = client.get("/v1/stats")
            assert answer.status_code == 200, answer.text
            return answer.json()  # type: ignore[no-any-return]

        _wait("both consumer processes running", lambda: all(w["running"] for w in stats()["workers"].values()))
        assert client.get("/readyz").status_code == 200
        asyncio.run(_produce(settings, events[:1500]))
        # Half-way through the first half: kill one process; its partitions go to the other meanwhile.
        _wait("some events stored", lambda: stats()["events_stored"] >= 300)
        victim = children._children[0].process.pid
        os.kill(victim, signal.SIGKILL)
        _wait("the killed process started again", lambda: children.restarts == 1)
        asyncio.run(_produce(settings, events[1500:]))
        stored_ids = {e.event_id for e in events}

        def all_stored() -> bool:
            store = SqliteStore(settings.data_dir / "store.db")
            try:
                return {s.last_part(k) for k, _ in store.scan(s.INTERACTIONS)} == stored_ids
            finally:
                store.close()

        _wait("every event stored", all_stored)
        final = _wait("no lag", lambda: (b := stats())["workers"]["events"]["lag"] == 0 and b)
        assert final["workers"]["events"]["running"] and not final["workers"]["events"]["failing"]
        # Counts of the killed process are as of its last answer; what it did after went again elsewhere.
        # An event is counted as stored after its dedupe row is written, so never twice.
        assert 0 < final["events_stored"] <= len(events)
        history = client.get("/v1/users/u001/history", params={"limit": 3})
        assert history.status_code == 200 and len(history.json()) == 3

    store = SqliteStore(settings.data_dir / "store.db")
    try:
        interactions = Counter(s.last_part(k) for k, _ in store.scan(s.INTERACTIONS))
        examples = {x.event_id: x.history for x in r.scan_examples(store)}
    finally:
        store.close()
    assert set(interactions) == {e.event_id for e in events} and set(interactions.values()) == {1}
    assert examples == asyncio.run(_reference(tmp_path, settings, events))


def test_stats_of_the_processes_add_up() -> None:
    from scalerec_preprocessor.pipeline import add_stats

    one = {
        "events_stored": 5,
        "duplicates_dropped": 1,
        "timeline_memo_entries": 7,
        "workers": {"events": {"processed": 6, "dead_lettered": 0, "lag": 2, "running": True, "failing": False}},
    }
    two = {
        "events_stored": 3,
        "workers": {"events": {"processed": 3, "dead_lettered": 1, "lag": 0, "running": True, "failing": True}},
    }
    retired = {"events_stored": 10, "workers": {"events": {"processed": 10, "dead_lettered": 0}}}
    total = add_stats([one, two], [retired])
    assert total["events_stored"] == 18 and total["duplicates_dropped"] == 1 and total["timeline_memo_entries"] == 7
    assert total["workers"]["events"] == {
        "processed": 19,
        "dead_lettered": 1,
        "lag": 2,
        "running": True,
        "failing": True,
    }
    stopped = {"workers": {"events": {"processed": 0, "dead_lettered": 0, "lag": 0, "running": False, "failing": True}}}
    assert add_stats([one, stopped])["workers"]["events"]["running"] is False
