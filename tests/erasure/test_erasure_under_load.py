"""Erasure under load (issue 11, test 2), on the shared Kafka, HBase and two Memcached nodes.

Two clients stream events for user U (and for others) through two collectors while ``DELETE U``
arrives; two preprocessor replicas share a two-partition topic, so the erasure and U's events may be
handled by different replicas at the same time; a ranker with an in-process cache keeps answering
for U.  Afterwards nothing the bus accepted for U up to the erasure is anywhere: not in any table,
on any Memcached node, in the ranker's cache, in the examples, nor in any log line.

What the bus accepted *after* the erasure (the clients keep sending for a moment) is U coming back:
it is kept, and the test checks it is exactly that, with no trace of the erased events in it (not in
the examples' histories either).  The bus's own append times tell the two apart, read back from
Kafka.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from scalerec_core.logging import user_ref
from scalerec_events.models import Event, TrainingExample
from scalerec_events.topics import Topic, dlq, topic_name
from scalerec_storage import records as r
from scalerec_storage import schema as s

from tests.erasure.conftest import Deployment, memcached_values, post_events
from tests.integration.conftest import HOST, KAFKA_PORT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ITEMS = [f"item-{n}" for n in range(40)]
TYPES = ["view", "view", "click", "add_to_cart", "purchase"]
RETENTION_HOURS = 48


def _event(event_id: str, user: str, rng: random.Random) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": user,
        "item_id": rng.choice(ITEMS),
        "type": rng.choice(TYPES),
        "timestamp": datetime.now(UTC).isoformat(),
        "context": {"device": "mobile", "locale": "en-GB"},
    }


class Streamer:
    """A client posting small batches (U's events among others') until told to stop."""

    def __init__(self, url: str, tag: str, users: list[str], target: str, seed: int) -> None:
        self.url, self.tag, self.users, self.target = url, tag, users, target
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with httpx.Client(timeout=30) as client:
                while not self.stop.is_set():
                    batch = []
                    for _ in range(6):
                        self.sent += 1
                        user = self.target if self.sent % 2 else self.rng.choice(self.users)
                        batch.append(_event(f"{self.tag}-{self.sent}", user, self.rng))
                    post_events(self.url, batch, client)
                    time.sleep(0.02)
        except BaseException as exc:  # reported by the test
            self.error = exc


async def _read_topic(topic: str) -> list[tuple[bytes | None, bytes, int]]:
    """Every message of ``topic`` (key, value, the bus's append time), from the beginning."""
    consumer = AIOKafkaConsumer(bootstrap_servers=f"{HOST}:{KAFKA_PORT}", enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(2)]  # TOPIC_PARTITIONS of the deployment
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        out: list[tuple[bytes | None, bytes, int]] = []
        while True:
            positions = [await consumer.position(tp) for tp in parts]
            if all(pos >= end[tp] for pos, tp in zip(positions, parts, strict=True)):
                return out
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                out += [(m.key, m.value, m.timestamp) for m in records if m.value is not None]
    finally:
        await consumer.stop()


async def _retention(topics: list[str]) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=f"{HOST}:{KAFKA_PORT}")
    await admin.start()
    try:
        resp = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
        out = {}
        for r_ in resp:
            for _, _, _, name, configs in r_.resources:
                out[name] = next(c[1] for c in configs if c[0] == "retention.ms")
        return out
    finally:
        await admin.close()


def _start(dep: Deployment) -> None:
    # Every service applies the retention to the topics when it starts: all get the same (the chart does).
    dep.env["BUS_RETENTION_HOURS"] = str(RETENTION_HOURS)
    for name in ("c1", "c2"):
        dep.start(name, "collector")
    for name in ("p1", "p2"):
        dep.start(name, "preprocessor")
    # Its own in-process cache, kept long: only the erasure can empty it.
    dep.start("ranker", "ranker", CACHE_URL="memory://", USER_STATE_TTL_SECONDS="600", WORKERS="1")
    dep.wait_ready("c1", "c2", "p1", "p2", "ranker")


@pytest.mark.parametrize("kind", ["plain", "punctuation"])
def test_erasure_under_load_leaves_nothing_of_the_user(deployment: Deployment, kind: str) -> None:
    dep = deployment
    tag = uuid.uuid4().hex[:6]
    # The punctuation run: an id using every non-alphanumeric character the id rules allow, and a
    # neighbour whose id starts with the whole of it (its rows sort right after U's).
    target = f"user-{tag}" if kind == "plain" else f"u.{tag}:a@b~c_d-e"
    neighbour = f"{target}~x"
    others = [neighbour, *(f"bg{n}-{tag}" for n in range(6))]
    _start(dep)
    with httpx.Client(timeout=30) as client:
        items = [{"item_id": i, "category": f"c{n % 4}", "price": 10 + n} for n, i in enumerate(ITEMS)]
        assert client.post(f"{dep.procs['c1'].url}/v1/items", json={"items": items}).status_code == 202
        # The old row-key separator is refused at the edge, naming the field.
        bad = client.delete(f"{dep.procs['c1'].url}/v1/users/{target}|x")
        assert bad.status_code == 422 and "user_id" in bad.text
        bad = client.post(
            f"{dep.procs['c1'].url}/v1/events", json={"events": [_event("e", f"{target}|x", random.Random())]}
        )
        assert bad.status_code == 422 and "user_id" in bad.text

    store = dep.store()
    streamers = [Streamer(dep.procs[c].url, f"{c}{tag}", others, target, seed) for c, seed in (("c1", 1), ("c2", 2))]
    probe_stop = threading.Event()

    def probe() -> None:  # fills the ranker's in-process cache with U's history, again and again
        with httpx.Client(timeout=10) as client:
            while not probe_stop.is_set():
                client.get(f"{dep.procs['ranker'].url}/v1/recommendations", params={"user_id": target})
                probe_stop.wait(0.2)

    prober = threading.Thread(target=probe, daemon=True)
    try:
        for st in streamers:
            st.thread.start()
        prober.start()
        deadline = time.monotonic() + 120
        while r.count_interactions(store, target) < 30:
            assert time.monotonic() < deadline, "U's events did not reach the store"
            assert not any(st.error for st in streamers), [st.error for st in streamers]
            time.sleep(0.5)
        with httpx.Client(timeout=30) as client:
            resp = client.delete(f"{dep.procs['c1'].url}/v1/users/{target}")
        assert resp.status_code == 202, resp.text
        time.sleep(1.5)  # the clients keep streaming while the erasure is on its way
    finally:
        for st in streamers:
            st.stop.set()
            st.thread.join(60)
        probe_stop.set()
        prober.join(30)
    assert not any(st.error for st in streamers), [st.error for st in streamers]

    dep.wait_drained("p1", "p2")
    deadline = time.monotonic() + 60
    while r.erasure_done(store, [target]).get(target, -1) < r.erased_at(store, [target]).get(target, 0):
        assert time.monotonic() < deadline, "the erasure did not finish"
        time.sleep(0.5)
    tombstone = r.erased_at(store, [target])[target]

    # What the bus accepted, and when: before the tombstone is erased, after it is U coming back.
    raw = asyncio.run(_read_topic(topic_name(Topic.EVENTS_RAW, dep.name)))
    by_user: dict[str, dict[str, tuple[Event, int]]] = {}
    for _, value, at in raw:
        e = Event.model_validate_json(value)
        by_user.setdefault(e.user_id, {})[e.event_id] = (e, at)
    mine = by_user[target]
    erased = {i for i, (_, at) in mine.items() if at <= tombstone}
    kept = {i for i, (_, at) in mine.items() if at > tombstone}
    assert len(erased) >= 30, "the erasure raced nothing"
    kept_items = {mine[i][0].item_id for i in kept}

    # Interactions, examples, dedupe index: exactly what came back, nothing erased.
    prefix = s.user_prefix(target)
    stored = [s.last_part(k) for k, _ in store.scan(s.INTERACTIONS, prefix=prefix)]
    assert sorted(stored) == sorted(kept), f"{len(set(stored) & erased)} erased events are back"
    examples = [TrainingExample.model_validate_json(c[b"x:json"]) for _, c in store.scan(s.EXAMPLES, prefix=prefix)]
    assert {x.event_id for x in examples} == kept
    assert all(set(x.history) <= kept_items for x in examples), "an erased item is in a training example's history"
    assert sum(1 for _ in store.scan(s.EVENT_INDEX, prefix=prefix)) == len(kept)
    # Item counters: no cell of an erased event (current or pre-upgrade qualifier) is left.
    for event_id in erased:
        e = mine[event_id][0]
        row = store.get(s.ITEM_DAILY, s.item_daily_key(e.ts_ms, e.item_id))
        assert s.item_daily_column(e.type.value, target, event_id) not in row
        assert s.legacy_item_daily_column(e.type.value, event_id) not in row
    # Profile: gone, or rebuilt from what came back only.
    profile = store.get(s.PROFILES, s.profile_key(target))
    bought_kept = {mine[i][0].item_id for i in kept if mine[i][0].type.value == "purchase"}
    assert (not profile) if not kept else (r.purchased_items(store, target) == bought_kept)

    # Every Memcached node: nothing of an erased event.
    for value in memcached_values(dep.name, target):
        entries = json.loads(value)
        ids = {e[3] for e in entries if isinstance(e, list)}
        assert not ids & erased, "a Memcached node still holds erased events"
        assert not (set(e for e in entries if isinstance(e, str)) - bought_kept), "erased purchases cached"

    # The ranker dropped U from its in-process cache after the store was erased (its log says so, by the
    # keyed hash), so what it serves from now on comes from the erased store.
    forgot = f"forgot erased user {user_ref(target, dep.env['LOG_ID_KEY'])}"
    deadline = time.monotonic() + 60
    while forgot not in dep.procs["ranker"].log.read_text():
        assert time.monotonic() < deadline, "the ranker never dropped the erased user from its cache"
        time.sleep(1.0)
    with httpx.Client(timeout=10) as client:
        answer = client.get(f"{dep.procs['ranker'].url}/v1/recommendations", params={"user_id": target}).json()
    for item in answer["items"]:
        assert set(item["because"]) <= kept_items, item

    # The neighbour and everyone else: untouched, exactly once each.
    for user in others:
        ids = [s.last_part(k) for k, _ in store.scan(s.INTERACTIONS, prefix=s.user_prefix(user))]
        assert sorted(ids) == sorted(by_user.get(user, {})), user

    # Bus copies: the personal topics and every dead-letter topic are kept RETENTION_HOURS only.
    personal = [topic_name(t, dep.name) for t in (Topic.EVENTS_RAW, Topic.EXAMPLES, Topic.IMPRESSIONS)]
    topics = personal + [dlq(topic_name(t, dep.name)) for t in Topic]
    assert set(asyncio.run(_retention(topics)).values()) == {str(RETENTION_HOURS * 3600_000)}

    # No log line names a user in clear (they carry the keyed hash).
    logs = dep.logs()
    assert logs, "no service logged anything"
    for user in [target, *others]:
        assert user not in logs, f"{user!r} appears in a log line"
    store.close()
