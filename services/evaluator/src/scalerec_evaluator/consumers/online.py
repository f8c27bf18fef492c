"""<DEPLOYMENT>.events.impressions.v1 + events.raw.v1 → exposure and outcome rows in the store.

Every impression (what a ranker answer showed) and every feedback event that points back to one
(``context.request_id``) becomes one row keyed by its id (:mod:`scalerec_storage.schema`,
``EXPOSURES``).  A put of the same row twice is one row, and the bus offsets are committed only
after the batch's rows are written, so a re-delivery or a restart (even a kill -9 in the middle of
a batch) neither loses nor doubles an impression or a click.  Results are computed from the rows
(:mod:`scalerec_evaluator.results`), never from counters in memory.

Feedback is stored under its impression's experiment, found through ``REQUEST_INDEX``.  Feedback
whose impression has not arrived yet (two topics, no order between them) waits in
``PENDING_FEEDBACK`` and is moved once the impression is there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence

from pydantic import ValidationError
from scalerec_adapters.bus import Message
from scalerec_adapters.store import WideColumnStore
from scalerec_adapters.worker import BatchResult
from scalerec_events.labels import is_conversion
from scalerec_events.models import Event, EventType, Impression
from scalerec_storage import schema as s

log = logging.getLogger(__name__)

# Feedback that waits this long for its impression never gets one (the ranker drops impressions
# only when the bus is slower than traffic for a long time): it is dropped from the pending table.
PENDING_MAX_AGE_MS = 86_400_000
# How often the whole table of waiting feedback is swept (its expired rows dropped).
PENDING_SWEEP_S = 300.0
_FEEDBACK_TYPES = {EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE, EventType.RATING}


def _feedback_cells(ev: Event) -> dict[bytes, bytes]:
    doc = {
        "event_id": ev.event_id,
        "user_id": ev.user_id,  # joined only with an impression shown to the same user (results.joined_requests)
        "item_id": ev.item_id,
        "type": ev.type.value,
        "ts_ms": ev.ts_ms,
        "click": ev.type is EventType.CLICK,
        "conversion": is_conversion(ev.type, ev.value),
    }
    return {b"o:f": json.dumps(doc).encode()}


def _impression_cells(imp: Impression) -> dict[bytes, bytes]:
    doc = {
        "user_id": imp.user_id,
        "variant": imp.variant,
        "model_version": imp.model_version,
        "fallback": imp.fallback,
        "ts_ms": imp.ts_ms,
        "items": {i.item_id: i.position for i in imp.items},
    }
    return {b"o:i": json.dumps(doc).encode()}


class OnlineRecorder:
    def __init__(self, store: WideColumnStore, *, impressions_topic: str) -> None:
        # Impressions and feedback events arrive through one group; the topic tells them apart.
        self.store = store
        self.impressions_topic = impressions_topic
        self.pending = 0  # feedback rows waiting for their impression (as of the last batch)
        # The request ids those rows wait for (None until the first full sweep): a batch resolves only the
        # ones whose impression it brings, and the whole table is swept at most every PENDING_SWEEP_S. Each
        # batch used to scan and parse all of it, and anyone with an ingest key can fill it for a day.
        self.waiting_for: set[str] | None = None
        self._swept_at = -float("inf")

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        result = BatchResult()
        impressions: list[Impression] = []
        feedback: list[Event] = []
        for m in messages:
            try:
                if m.topic == self.impressions_topic:
                    impressions.append(Impression.model_validate_json(m.value))
                else:
                    ev = Event.model_validate_json(m.value)
                    rid = ev.context.request_id
                    if rid and s.SEP.decode() not in rid and ev.type in _FEEDBACK_TYPES:
                        feedback.append(ev)
            except (ValidationError, ValueError) as exc:
                result.poison.append((m, f"unreadable: {exc}"))
        if impressions or feedback:
            await asyncio.to_thread(self._write, impressions, feedback)
        return result

    def _write(self, impressions: list[Impression], feedback: list[Event]) -> None:
        store = self.store
        # Impressions first (and their index rows), so feedback in the same batch finds them.
        store.put_many(
            s.EXPOSURES, [(s.impression_row(i.experiment_id, i.request_id), _impression_cells(i)) for i in impressions]
        )
        store.put_many(
            s.REQUEST_INDEX,
            [(i.request_id.encode(), {b"o:x": (i.experiment_id or s.NO_EXPERIMENT).encode()}) for i in impressions],
        )
        where = self._experiments_of({ev.context.request_id or "" for ev in feedback})
        placed, waiting, waiting_for = [], [], set()
        for ev in feedback:
            rid = ev.context.request_id or ""
            if rid in where:
                placed.append((s.feedback_row(where[rid], rid, ev.event_id), _feedback_cells(ev)))
            else:
                waiting.append((s.pending_row(rid, ev.event_id), _feedback_cells(ev)))
                waiting_for.add(rid)
        store.put_many(s.EXPOSURES, placed)
        store.put_many(s.PENDING_FEEDBACK, waiting)
        if self.waiting_for is None or time.monotonic() - self._swept_at > PENDING_SWEEP_S:
            self._resolve_pending()
            return
        self.pending += len(waiting)
        self.waiting_for |= waiting_for
        arrived = {i.request_id for i in impressions} & self.waiting_for
        if arrived:
            self._resolve_pending(arrived)

    def _experiments_of(self, request_ids: set[str]) -> dict[str, str | None]:
        if not request_ids:
            return {}
        rows = self.store.get_many(s.REQUEST_INDEX, [r.encode() for r in sorted(request_ids)])
        out: dict[str, str | None] = {}
        for key, cells in rows.items():
            exp = cells.get(b"o:x", s.NO_EXPERIMENT.encode()).decode()
            out[key.decode()] = None if exp == s.NO_EXPERIMENT else exp
        return out

    def _resolve_pending(self, arrived: set[str] | None = None) -> None:
        """Move waiting feedback whose impression has arrived; forget what waited too long.

        With ``arrived``, only the rows of those request ids (their impressions just came); without, the
        whole table (a sweep, which also drops rows older than PENDING_MAX_AGE_MS and refills ``waiting_for``).
        """
        if arrived is None:
            rows = list(self.store.scan(s.PENDING_FEEDBACK))
        else:
            rows = [
                row
                for rid in sorted(arrived)
                for row in self.store.scan(s.PENDING_FEEDBACK, prefix=rid.encode() + s.SEP)
            ]
        by_request: dict[str, list[tuple[bytes, dict[bytes, bytes]]]] = {}
        for key, cells in rows:
            rid = key.split(s.SEP, 1)[0].decode()
            by_request.setdefault(rid, []).append((key, cells))
        where = self._experiments_of(set(by_request))
        moved, done = [], []
        now = int(time.time() * 1000)
        for rid, entries in by_request.items():
            for key, cells in entries:
                doc = json.loads(cells[b"o:f"])
                if rid in where:
                    moved.append((s.feedback_row(where[rid], rid, doc["event_id"]), cells))
                    done.append(key)
                elif now - int(doc["ts_ms"]) > PENDING_MAX_AGE_MS:
                    log.info("feedback %s: no impression %s arrived within a day; dropped", doc["event_id"], rid)
                    done.append(key)
        # Written before the pending rows go: a crash in between leaves a row to move again (idempotent).
        self.store.put_many(s.EXPOSURES, moved)
        self.store.delete_many(s.PENDING_FEEDBACK, done)
        if arrived is None:
            gone = set(done)
            self.waiting_for = {key.split(s.SEP, 1)[0].decode() for key, _ in rows if key not in gone}
            self._swept_at = time.monotonic()
            self.pending = len(rows) - len(done)
        else:
            assert self.waiting_for is not None
            self.waiting_for -= {rid for rid in arrived if rid in where}
            self.pending = max(0, self.pending - len(done))
