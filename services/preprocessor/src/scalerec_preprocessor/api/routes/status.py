"""GET /v1/stats and GET /v1/users/{user_id}/history: what the preprocessor has done, for operators and tests."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel
from scalerec_core.auth import Scope, require
from scalerec_core.http import Digits, StrictQueryRoute
from scalerec_events.models import ID_MAX_LENGTH, ID_PATTERN
from scalerec_storage import records as r

from scalerec_preprocessor.deps import PipelineDep, StoreDep

router = APIRouter(prefix="/v1", tags=["status"], dependencies=[require(Scope.ADMIN)], route_class=StrictQueryRoute)


class WorkerStats(BaseModel):
    processed: int
    dead_lettered: int
    lag: int
    running: bool
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
async def stats(pipeline: PipelineDep) -> Stats:
    """Summed over the consumer processes when ``WORKERS`` > 1 (each asked now, not a snapshot)."""
    return Stats.model_validate(await pipeline.stats())


class HistoryItem(BaseModel):
    item_id: str
    ts_ms: int
    type: str
    event_id: str


@router.get("/users/{user_id}/history", response_model=list[HistoryItem], summary="A user's recent history")
async def history(
    store: StoreDep,
    user_id: Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)],
    limit: Annotated[int, Digits, Query(ge=1, le=1000)] = 50,
) -> list[HistoryItem]:
    entries = await asyncio.to_thread(r.recent_history, store, user_id, limit)
    return [HistoryItem(item_id=e.item_id, ts_ms=e.ts_ms, type=e.type, event_id=e.event_id) for e in entries]
