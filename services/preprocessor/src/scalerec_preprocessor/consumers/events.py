"""<DEPLOYMENT>.events.raw.v1 → interactions, item counters, profiles, point-in-time examples, hot history.

Every write is idempotent (row keys carry the event_id), and the dedupe index is
written last: a crash anywhere in a batch means the batch is re-delivered and
rewritten to the same cells, so nothing is lost and nothing counts twice.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from bisect import bisect_left
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from scalerec_adapters.bus import Message, OutgoingMessage, Producer
from scalerec_adapters.cache import Cache, CacheKeys
from scalerec_adapters.store import WideColumnStore
from scalerec_adapters.worker import BatchResult
from scalerec_core.telemetry import inject_headers, meter
from scalerec_events.labels import is_conversion
from scalerec_events.models import Event, EventType, TrainingExample
from scalerec_features import CONTEXT_FIELDS, context_features
from scalerec_storage import records as r
from scalerec_storage import schema as s

log = logging.getLogger(__name__)


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
    duplicates: int = 0
    erased: int = 0


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
        self._parsed: OrderedDict[str, tuple[bytes, list[r.HistoryEntry]]] = OrderedDict()
        self._parsed_max = 200_000

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        result = BatchResult()
        events: list[Event] = []
        for message in messages:
            try:
                events.append(Event.model_validate_json(message.value))
            except ValidationError as exc:
                result.poison.append((message, f"invalid event: {exc.errors()[0].get('msg', exc)}"))
        if not events:
            return result
        # Runs inside the worker's batch span (linked to every event's trace): the examples continue it.
        plan = await asyncio.to_thread(self._write, events)
        if plan.examples:
            headers = tuple(inject_headers())
            await self.producer.send_batch(
                self.examples_topic, [OutgoingMessage(payload, key, headers) for key, payload in plan.examples]
            )
        await asyncio.to_thread(self._finish, plan)
        self.stored += len(plan.new_ids)
        self._stored_counter.add(len(plan.new_ids))
        self.duplicates += plan.duplicates
        self.dropped_erased += plan.erased
        return result

    def _write(self, events: list[Event]) -> _Plan:
        plan = _Plan()
        # Dedupe: within the batch, then against everything already stored.
        unique: dict[str, Event] = {}
        for e in events:
            unique.setdefault(e.event_id, e)
        plan.duplicates = len(events) - len(unique)
        seen = self.store.get_many(s.EVENT_INDEX, [i.encode() for i in unique], columns=[b"m:row"])
        fresh = [e for i, e in unique.items() if i.encode() not in seen]
        plan.duplicates += len(unique) - len(fresh)
        tombstones = r.erased_at(self.store, sorted({e.user_id for e in fresh}))
        ts = {e.event_id: e.ts_ms for e in fresh}  # computed once: ts_ms is not free
        kept = [e for e in fresh if ts[e.event_id] > tombstones.get(e.user_id, -1)]
        plan.erased = len(fresh) - len(kept)
        if not kept:
            return plan

        by_user: dict[str, list[Event]] = defaultdict(list)
        for e in kept:
            by_user[e.user_id].append(e)
        items = r.get_item_features(self.store, sorted({e.item_id for e in kept}))
        timelines = self._timelines(by_user, ts)
        # A user without a profile row has no stored interactions yet: nothing to scan for.
        unknown = sorted(u for u in by_user if u not in timelines)
        with_profile = self.store.get_many(s.PROFILES, [s.profile_key(u) for u in unknown], columns=[b"p:last_ts"])
        for u in unknown:
            if s.profile_key(u) not in with_profile:
                timelines[u] = []
        interactions, daily, profiles, examples_rows = [], [], [], []
        for user_id, user_events in by_user.items():
            user_events.sort(key=lambda e: (ts[e.event_id], e.event_id))
            last_ts = ts[user_events[-1].event_id]
            known = timelines.get(user_id)
            if known is None:  # not cached, or events older than the cached tail: the store has it all
                stored = r.recent_history(self.store, user_id, self.history_len * 2, before_ts_ms=last_ts + 1)
                known = [h for h in stored if h.type != EventType.IMPRESSION.value]
            interest = r.merge_history(
                known,
                (
                    r.HistoryEntry(e.item_id, ts[e.event_id], e.type.value, e.event_id)
                    for e in user_events
                    if e.type is not EventType.IMPRESSION
                ),
                limit=len(known) + len(user_events),
            )
            interest_ts = [h.ts_ms for h in interest]
            for e in user_events:
                e_ts = ts[e.event_id]
                key = s.interaction_key(user_id, e_ts, e.event_id)
                interactions.append((key, r.interaction_cells(e, e_ts)))
                daily.append(r.item_daily_cells(e, e_ts))
                plan.index_rows.append((e.event_id.encode(), {b"m:row": key}))
                plan.new_ids.append(e.event_id)
                if e.type is EventType.IMPRESSION:
                    continue
                # Point in time: only what happened strictly before this event.
                cut = bisect_left(interest_ts, e_ts)
                before = interest[max(0, cut - self.history_len) : cut]
                payload = self._example(e, e_ts, [h.item_id for h in before], items).model_dump_json().encode()
                plan.examples.append((user_id.encode(), payload))
                examples_rows.append((s.example_key(user_id, e_ts, e.event_id), r.example_cells(payload)))
            last = user_events[-1]
            profile = {
                b"p:last_ts": str(last_ts).encode(),
                b"p:device": (last.context.device or "").encode(),
                b"p:locale": (last.context.locale or "").encode(),
            }
            # Every purchase ever, not just the recent history: the ranker never recommends them again.
            purchases = [r.purchase_cells(e, ts[e.event_id]) for e in user_events if e.type is EventType.PURCHASE]
            if purchases:
                profile.update(purchases)
                plan.buyers.add(user_id)
            profiles.append((s.profile_key(user_id), profile))
            plan.histories[user_id] = interest[-self.history_len :]
        self.store.put_many(s.INTERACTIONS, interactions)
        self.store.put_many(s.ITEM_DAILY, daily)
        self.store.put_many(s.EXAMPLES, examples_rows)
        self.store.put_many(s.PROFILES, profiles)
        return plan

    def _timelines(self, by_user: dict[str, list[Event]], ts: dict[str, int]) -> dict[str, list[r.HistoryEntry]]:
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
            first = min(ts[e.event_id] for e in by_user[user_id])
            if len(tail) < self.history_len or not tail or first > tail[-1].ts_ms:
                out[user_id] = tail
        return out

    def _example(self, e: Event, ts_ms: int, history: list[str], items: dict[str, list[int]]) -> TrainingExample:
        features = items.get(e.item_id) or [0, 0]
        # Built from already-validated parts: construct, do not validate again (a third of the batch's time).
        return TrainingExample.model_construct(
            schema_version=1,
            event_id=e.event_id,
            user_id=e.user_id,
            item_id=e.item_id,
            type=e.type,
            ts_ms=ts_ms,
            value=e.value,
            history=history,
            context=dict(zip(CONTEXT_FIELDS, context_features(ts_ms, e.context.device, e.context.locale), strict=True)),
            item={"category": features[0], "price_bucket": features[1]},
            label_click=int(e.type is not EventType.VIEW),
            label_conversion=int(is_conversion(e.type, e.value)),
        )

    def _finish(self, plan: _Plan) -> None:
        # Last: marks the batch's events as done. Everything before it is safe to redo.
        self.store.put_many(s.EVENT_INDEX, plan.index_rows)
        if not plan.histories:
            return
        try:
            values = {}
            for user, hist in plan.histories.items():
                value = json.dumps([h.to_list() for h in hist]).encode()
                values[r.history_cache_key(self.keys, user)] = value  # what the ranker reads
                values[r.timeline_cache_key(self.keys, user)] = value  # what the next batch starts from
            self.cache.set_many(values, self.cache_ttl)
            for user, hist in plan.histories.items():
                self._parsed[user] = (values[r.timeline_cache_key(self.keys, user)], hist)
                self._parsed.move_to_end(user)
            while len(self._parsed) > self._parsed_max:
                self._parsed.popitem(last=False)
            # The cached "everything bought" set is now short: the next read refills it from the store.
            if plan.buyers:
                self.cache.delete_many([r.bought_cache_key(self.keys, u) for u in sorted(plan.buyers)])
        except Exception as exc:  # the cache is an optimisation; the store has it all
            log.info("cache update skipped: %s", exc)
