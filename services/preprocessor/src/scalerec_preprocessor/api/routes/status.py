"""GET /v1/stats and GET /v1/users/{user_id}/history: what the preprocessor has done, for operators and tests."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel
from scalerec_core.auth import Scope, require
from scalerec_events.models import ID_MAX_LENGTH, ID_PATTERN
from scalerec_storage import records as r

from scalerec_preprocessor.deps import ConsumersDep, StoreDep, WorkersDep

router = APIRouter(prefix="/v1", tags=["status"], dependencies=[require(Scope.ADMIN)])


class WorkerStats(BaseModel):
    processed: int
    dead_lettered: int
    lag: int
    failing: bool


class Stats(BaseModel):
    workers: dict[str, WorkerStats]
    events_stored: int
    duplicates_dropped: int
    dropped_after_erasure: int
    items_stored: int
    users_erased: int
    timeline_memo_entries: int  # parsed history entries held in memory (TIMELINE_MEMO_ENTRIES bounds it)


@router.get("/stats", response_model=Stats, summary="Consumer progress and counts")
async def stats(workers: WorkersDep, consumers: ConsumersDep) -> Stats:
    out = {}
    for name, w in workers.items():
        out[name] = WorkerStats(
            processed=w.processed, dead_lettered=w.dead_lettered, lag=await w.lag(), failing=w.failing
        )
    ev = consumers.events
    return Stats(
        workers=out,
        events_stored=ev.stored,
        duplicates_dropped=ev.duplicates,
        dropped_after_erasure=ev.dropped_erased,
        items_stored=consumers.items.stored,
        users_erased=consumers.erasure.erased,
        timeline_memo_entries=ev.memo_entries_held,
    )


class HistoryItem(BaseModel):
    item_id: str
    ts_ms: int
    type: str
    event_id: str


@router.get("/users/{user_id}/history", response_model=list[HistoryItem], summary="A user's recent history")
async def history(
    store: StoreDep,
    user_id: Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[HistoryItem]:
    entries = await asyncio.to_thread(r.recent_history, store, user_id, limit)
    return [HistoryItem(item_id=e.item_id, ts_ms=e.ts_ms, type=e.type, event_id=e.event_id) for e in entries]
