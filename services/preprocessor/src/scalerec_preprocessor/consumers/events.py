"""<DEPLOYMENT>.events.raw.v1 → interactions, item counters, profiles, point-in-time examples, hot history.

Every write is idempotent (row keys carry the user and the event_id), and the dedupe
index is written last: a crash anywhere in a batch means the batch is re-delivered
and rewritten to the same cells, so nothing is lost and nothing counts twice.

Erasure: an event belongs to an erased user when the bus accepted it (its ingest time,
not the client's timestamp) at or before the user's tombstone.  Tombstones are read
before a batch is written and again after it: an erasure that started in between may
have scanned before this batch's rows landed, so the batch then erases the user itself
and is run again (see ``scalerec_storage.records.erase_user``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from bisect import bisect_left
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import to_json
from scalerec_adapters.bus import Message, OutgoingMessage, Producer
from scalerec_adapters.cache import Cache, CacheKeys
from scalerec_adapters.store import WideColumnStore
from scalerec_adapters.worker import BatchResult, RetryLater, parse_batch
from scalerec_core.logging import user_ref
from scalerec_core.telemetry import inject_headers, meter
from scalerec_events.labels import is_conversion
from scalerec_events.models import Event, EventType
from scalerec_features import CONTEXT_FIELDS, context_features
from scalerec_storage import records as r
from scalerec_storage import schema as s

log = logging.getLogger(__name__)


# The youngest generation's GC threshold while consuming (main.py; scalerec_core.service.long_lived_heap):
# a batch makes tens of thousands of objects that live until it ends.
BATCH_GC_THRESHOLD = 10_000


@functools.cache
def _stored_counter() -> Any:
    """Events stored per second is its rate; one instrument per process, however many consumers."""
    return meter("scalerec.preprocessor").create_counter(
        "scalerec.preprocessor.events.stored", unit="{event}", description="New events written to the store"
    )


@dataclass
class _Plan:
    examples: list[tuple[bytes, bytes]] = field(default_factory=list)  # (user key, example JSON)
    new_ids: list[str] = field(default_factory=list)
    index_rows: list[tuple[bytes, dict[bytes, bytes]]] = field(default_factory=list)
    histories: dict[str, list[r.HistoryEntry]] = field(default_factory=dict)
    buyers: set[str] = field(default_factory=set)
    # Tombstones as read before writing, and the index keys written per user (for a re-run).
    tombstones: dict[str, int] = field(default_factory=dict)
    user_index: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    duplicates: int = 0
    erased: int = 0


def example_json(e: Event, ts_ms: int, history: list[str], features: list[int] | None) -> bytes:
    """The :class:`TrainingExample` of ``e`` as its JSON, built from already-validated parts.

    As plain values in one pydantic-core call: constructing the model and dumping it cost twice as much
    (7.6 against 4.0 µs), for every event of every batch.  The keys are the model's fields in its
    order and the values what its dump writes (``tests/unit/services/test_preprocessor.py`` holds
    this to ``TrainingExample(...).model_dump_json()`` for every event type); the trainer validates
    what it reads.
    """
    category, price = features[:2] if features else (0, 0)
    return to_json(
        {
            "schema_version": 1,
            "event_id": e.event_id,
            "user_id": e.user_id,
            "item_id": e.item_id,
            "type": e.type.value,
            "ts_ms": ts_ms,
            "value": e.value,
            "history": history,
            "context": dict(
                zip(CONTEXT_FIELDS, context_features(ts_ms, e.context.device, e.context.locale), strict=True)
            ),
            "item": {"category": category, "price_bucket": price},
            "label_click": int(e.type is not EventType.VIEW),
            "label_conversion": int(is_conversion(e.type, e.value)),
        }
    )


class EventsConsumer:
    def __init__(
        self,
        store: WideColumnStore,
        cache: Cache,
        keys: CacheKeys,
        producer: Producer,
        history_len: int,
        cache_ttl: int,
        *,
        examples_topic: str,
        memo_entries: int = 500_000,
    ) -> None:
        self.store = store
        self.examples_topic = examples_topic
        self.cache = cache
        self.keys = keys
        self.producer = producer
        self.history_len = history_len
        self.cache_ttl = cache_ttl
        self.stored = 0
        self.duplicates = 0
        self.dropped_erased = 0
        self._stored_counter = _stored_counter()
        # The timelines this process last wrote, parsed: reused when the cache still holds those bytes.
        # Bounded by entries, not users (a user holds up to history_len of them, ~350 bytes each with
        # the cached bytes): 200,000 users of 50 entries took 3 GB, past the chart's 2 GiB limit.
        self._parsed: OrderedDict[str, tuple[bytes, list[r.HistoryEntry]]] = OrderedDict()
        self._parsed_entries = 0
        self._memo_entries = memo_entries
        # The offset after the last this process consumed, per (topic, partition): an in-process cache is
        # trusted only for partitions consumed without a gap (see _check_continuity).
        self._next_offset: dict[tuple[str, int], int] = {}

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        if self.cache.in_process:
            self._check_continuity(messages)
        parsed, result = parse_batch(messages, Event, "event")
        if not parsed:
            return result
        now_ms = int(time.time() * 1000)
        # When the bus accepted each event (the producer's append time): what tombstones compare with.
        events = [(e, m.timestamp_ms or now_ms) for m, e in parsed]
        # Runs inside the worker's batch span (linked to every event's trace): the examples continue it.
        plan = await asyncio.to_thread(self._write, events)
        if plan.examples:
            headers = tuple(inject_headers())
            await self.producer.send_batch(
                self.examples_topic, [OutgoingMessage(payload, key, headers) for key, payload in plan.examples]
            )
        await asyncio.to_thread(self._finish, plan)
        await asyncio.to_thread(self._recheck_erasures, plan)
        self.stored += len(plan.new_ids)
        self._stored_counter.add(len(plan.new_ids))
        self.duplicates += plan.duplicates
        self.dropped_erased += plan.erased
        return result

    def _check_continuity(self, messages: Sequence[Message]) -> None:
        """Forget the in-process cache and the memo when another process consumed some of these partitions.

        An in-process cache (embedded backends) holds only the timelines this process wrote.  With
        ``WORKERS`` > 1 the consumer group can hand a partition to another process and back (one stopped,
        died or joined); that process wrote newer events of the partition's users, which this cache has
        not seen, and a timeline taken from it would miss them.  Such a hand-over shows as a partition
        resuming past the offset this process stopped at: then everything cached goes (the store has it
        all; the next batches read it).  A re-delivered batch resumes before that offset: nothing is lost.
        A shared cache (Memcached) sees every process's writes and is kept.
        """
        ends: dict[tuple[str, int], tuple[int, int]] = {}  # (first, last) offset of each partition here
        for m in messages:
            where = (m.topic, m.partition)
            first = ends[where][0] if where in ends else m.offset
            ends[where] = (first, m.offset)
        gap = False
        for where, (first, last) in ends.items():
            expected = self._next_offset.get(where)
            gap = gap or (expected is not None and first > expected)
            self._next_offset[where] = max(expected or 0, last + 1)
        if gap:
            log.info("another consumer process handled some of these partitions: the in-process cache is dropped")
            self.cache.forget_local()
            self._parsed.clear()
            self._parsed_entries = 0

    def _write(self, batch: list[tuple[Event, int]]) -> _Plan:
        plan = _Plan()
        # Dedupe per (user, event id): within the batch, then against everything already stored.
        unique: dict[bytes, tuple[Event, int]] = {}
        for e, at in batch:
            unique.setdefault(s.event_index_key(e.user_id, e.event_id), (e, at))
        plan.duplicates = len(batch) - len(unique)
        # The family, not one column: index rows are one cell (m:at) now, older ones had m:row too.
        seen = self.store.get_many(s.EVENT_INDEX, list(unique), columns=[b"m"])
        fresh = [v for k, v in unique.items() if k not in seen]
        plan.duplicates += len(unique) - len(fresh)
        tombstones = plan.tombstones = r.erased_at(self.store, sorted({e.user_id for e, _ in fresh}))
        ingest = {(e.user_id, e.event_id): at for e, at in fresh}
        kept = [e for e, at in fresh if at > tombstones.get(e.user_id, -1)]
        plan.erased = len(fresh) - len(kept)
        if plan.erased:
            # Re-delivered events of an erased user: a crashed earlier run may have written some of them
            # after the erasure's scans. Erasing again (idempotent) removes whatever that left.
            for user_id in sorted({e.user_id for e, at in fresh if at <= tombstones.get(e.user_id, -1)}):
                r.erase_user(self.store, self.cache, self.keys, user_id, tombstones[user_id])
        if not kept:
            return plan
        ts = {(e.user_id, e.event_id): e.ts_ms for e in kept}  # computed once: ts_ms is not free

        by_user: dict[str, list[Event]] = defaultdict(list)
        for e in kept:
            by_user[e.user_id].append(e)
        items = r.get_item_features(self.store, sorted({e.item_id for e in kept}))
        # An erased user's history comes from the store, without what the erasure removes.
        timelines = self._timelines({u: v for u, v in by_user.items() if u not in tombstones}, ts)
        # A user without a profile row has no stored interactions yet: nothing to scan for.
        unknown = sorted(u for u in by_user if u not in timelines)
        with_profile = self.store.get_many(s.PROFILES, [s.profile_key(u) for u in unknown], columns=[b"p:last_ts"])
        for u in unknown:
            if s.profile_key(u) not in with_profile:
                timelines[u] = []
        interactions, daily, profiles, examples_rows = [], [], [], []
        for user_id, user_events in by_user.items():
            user_events.sort(key=lambda e: (ts[(e.user_id, e.event_id)], e.event_id))
            last_ts = ts[(user_id, user_events[-1].event_id)]
            known = timelines.get(user_id)
            if known is None:  # not cached, or events older than the cached tail: the store has it all
                stored = r.recent_history(self.store, user_id, self.history_len * 2, before_ts_ms=last_ts + 1)
                gone = tombstones.get(user_id, -1)
                known = [h for h in stored if h.type != EventType.IMPRESSION.value and h.ingest_ms > gone]
            interest = r.merge_history(
                known,
                (
                    r.HistoryEntry(e.item_id, ts[(e.user_id, e.event_id)], e.type.value, e.event_id)
                    for e in user_events
                    if e.type is not EventType.IMPRESSION
                ),
                limit=len(known) + len(user_events),
            )
            interest_ts = [h.ts_ms for h in interest]
            for e in user_events:
                e_ts = ts[(e.user_id, e.event_id)]
                e_at = ingest[(e.user_id, e.event_id)]
                key = s.interaction_key(user_id, e_ts, e.event_id)
                interactions.append((key, r.interaction_cells(e, e_ts, e_at)))
                daily.append(r.item_daily_cells(e, e_ts))
                index_key = s.event_index_key(user_id, e.event_id)
                plan.index_rows.append((index_key, r.index_cells(e_at)))
                plan.user_index[user_id].append(index_key)
                plan.new_ids.append(e.event_id)
                if e.type is EventType.IMPRESSION:
                    continue
                # Point in time: only what happened strictly before this event.
                cut = bisect_left(interest_ts, e_ts)
                before = interest[max(0, cut - self.history_len) : cut]
                payload = example_json(e, e_ts, [h.item_id for h in before], items.get(e.item_id))
                plan.examples.append((user_id.encode(), payload))
                examples_rows.append((s.example_key(user_id, e_ts, e.event_id), r.example_cells(payload, e_at)))
            last = user_events[-1]
            profile = {
                b"p:last_ts": str(last_ts).encode(),
                b"p:device": (last.context.device or "").encode(),
                b"p:locale": (last.context.locale or "").encode(),
            }
            # Every purchase ever, not just the recent history: the ranker never recommends them again.
            purchases = [
                r.purchase_cells(e, ts[(user_id, e.event_id)]) for e in user_events if e.type is EventType.PURCHASE
            ]
            if purchases:
                profile.update(purchases)
                plan.buyers.add(user_id)
            profiles.append((s.profile_key(user_id), profile))
            plan.histories[user_id] = interest[-self.history_len :]
        # One write for the four tables: one transaction on SQLite, batched mutateRows on HBase.  Profiles
        # last: an erasure that finds a profile cell of this batch then finds its interactions too.
        self.store.put_tables(
            {s.INTERACTIONS: interactions, s.ITEM_DAILY: daily, s.EXAMPLES: examples_rows, s.PROFILES: profiles}
        )
        return plan

    def _timelines(
        self, by_user: dict[str, list[Event]], ts: dict[tuple[str, str], int]
    ) -> dict[str, list[r.HistoryEntry]]:
        """Each user's last interest entries from the cache, where they are enough for this batch.

        The cache holds the last ``history_len`` entries this preprocessor wrote.  They are the
        whole point-in-time history of every event newer than all of them (or of any event, when
        the user has fewer): no per-user store scan for a user seen recently.  Anything else — a
        miss, a late event — reads the store.
        """
        keys = {u: r.timeline_cache_key(self.keys, u) for u in by_user}
        try:
            hits = self.cache.get_many(list(keys.values()))
        except Exception:
            return {}
        out = {}
        for user_id, key in keys.items():
            raw = hits.get(key)
            if raw is None:
                continue
            known = self._parsed.get(user_id)
            if known is not None and known[0] == raw:
                tail = known[1]
            else:
                tail = [r.HistoryEntry.from_list(x) for x in json.loads(raw)]
            first = min(ts[(e.user_id, e.event_id)] for e in by_user[user_id])
            if len(tail) < self.history_len or not tail or first > tail[-1].ts_ms:
                out[user_id] = tail
        return out

    def _finish(self, plan: _Plan) -> None:
        # Last: marks the batch's events as done. Everything before it is safe to redo.
        self.store.put_many(s.EVENT_INDEX, plan.index_rows)
        if not plan.histories:
            return
        try:
            values = {}
            for user, hist in plan.histories.items():
                value = r.encode_history(hist)
                values[r.history_cache_key(self.keys, user)] = value  # what the ranker reads
                values[r.timeline_cache_key(self.keys, user)] = value  # what the next batch starts from
            self.cache.set_many(values, self.cache_ttl)
            self._memo(plan.histories, values)
            # The cached "everything bought" set is now short: the next read refills it from the store.
            if plan.buyers:
                self.cache.delete_many([r.bought_cache_key(self.keys, u) for u in sorted(plan.buyers)])
        except Exception as exc:  # the cache is an optimisation; the store has it all
            log.info("cache update skipped: %s", exc)

    @property
    def memo_entries_held(self) -> int:
        """History entries the memo of parsed timelines holds now (at most ``memo_entries``)."""
        return self._parsed_entries

    def _memo(self, histories: dict[str, list[r.HistoryEntry]], values: dict[str, bytes]) -> None:
        """Remember what was just cached for each user, parsed; the least recently written go first."""
        for user, hist in histories.items():
            self._forget(user)
            if len(hist) <= self._memo_entries:
                self._parsed[user] = (values[r.timeline_cache_key(self.keys, user)], hist)
                self._parsed_entries += len(hist)
        while self._parsed_entries > self._memo_entries:
            _, (_, hist) = self._parsed.popitem(last=False)
            self._parsed_entries -= len(hist)

    def _forget(self, user_id: str) -> None:
        old = self._parsed.pop(user_id, None)
        if old is not None:
            self._parsed_entries -= len(old[1])

    def _recheck_erasures(self, plan: _Plan) -> None:
        """After the writes: an erasure whose tombstone appeared (or moved) since ``_write`` read them may
        have scanned before this batch's rows landed.  Erase again (idempotent) so nothing it wrote of
        the erased events survives, forget the batch's index rows of that user and run the batch again:
        the re-run drops the erased events and rewrites the later ones with a history that has none of
        the erased ones (their examples were built from what was read before the erasure)."""
        users = sorted(plan.user_index)
        if not users:
            return
        now = r.erased_at(self.store, users)
        changed = [u for u in users if now.get(u, -1) > plan.tombstones.get(u, -1)]
        if not changed:
            return
        for user_id in changed:
            r.erase_user(self.store, self.cache, self.keys, user_id, now[user_id])
            self.store.delete_many(s.EVENT_INDEX, plan.user_index[user_id])
            self._forget(user_id)
            log.info("erasure of user %s ran during a batch; the batch runs again", user_ref(user_id))
        raise RetryLater(f"{len(changed)} user(s) of the batch were erased while it was written")
