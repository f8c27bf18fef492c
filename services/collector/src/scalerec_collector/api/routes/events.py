"""POST /v1/events."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Body, status
from scalerec_core.auth import Scope, require
from scalerec_core.http import StrictQueryRoute
from scalerec_events.models import Event
from scalerec_events.topics import Topic

from scalerec_collector.api.ingest import (
    EventBatchBody,
    IngestResult,
    bus_unavailable,
    publish,
    reject_all,
    split_valid,
)
from scalerec_collector.dedupe import dedupe_key
from scalerec_collector.deps import ProducerDep, RecentIdsDep, SettingsDep

router = APIRouter(prefix="/v1", tags=["events"], dependencies=[require(Scope.INGEST)], route_class=StrictQueryRoute)

_EXAMPLE = {
    "events": [
        {
            "event_id": "e-0001",
            "user_id": "u00042",
            "item_id": "i00017",
            "type": "view",
            "timestamp": "2026-11-27T10:15:00Z",
            "context": {"device": "mobile", "locale": "en-US", "session_id": "s-9"},
        }
    ]
}


@router.post(
    "/events",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IngestResult,
    summary="Accept a batch of events",
    responses={
        400: {"description": "Malformed JSON"},
        413: {"description": "Batch or body too large"},
        415: {"description": "The body's Content-Type is not JSON"},
        422: {"description": "Every event was invalid (each error names its field)"},
        503: {"description": "Bus unavailable; nothing was accepted, retry"},
    },
)
async def post_events(
    payload: Annotated[EventBatchBody, Body(openapi_examples={"one view": {"value": _EXAMPLE}})],
    settings: SettingsDep,
    producer: ProducerDep,
    recent: RecentIdsDep,
) -> IngestResult:
    """Events of type view, click, add_to_cart, purchase, rating or impression.

    Each event is validated on its own: invalid ones are reported in ``errors``
    (with the field at fault) and the rest of the batch is still accepted.  An
    ``event_id`` seen before for the same user is acknowledged as a duplicate and not stored again.
    """
    events, errors = split_valid(payload, "events", Event, settings.max_batch_events, "event_id")
    if not events:
        raise reject_all(errors, "event")
    while True:
        fresh: list[Event] = []
        keys: dict[str, None] = {}  # the fresh events' keys, in order
        others: set[asyncio.Future[bool]] = set()  # requests publishing some of these events right now
        for event in events:
            # Per user, as the preprocessor dedupes: one event id sent for two users is two events.
            key = dedupe_key(event)
            if key in recent or key in keys:
                continue
            if (publishing := recent.publishing(key)) is not None:
                others.add(publishing)
                continue
            keys[key] = None
            fresh.append(event)
        if not others:
            break
        await asyncio.wait(others)
        if not all(other.result() for other in others):
            # The bus refused the copy being published: refused here too, now (the client retries both).
            raise bus_unavailable("a copy of these events sent at the same time was refused")
        # Sorted again: what they published is now a duplicate.
    if fresh:
        with recent.claim(list(keys)):
            await publish(producer, settings.topic(Topic.EVENTS_RAW), fresh, lambda e: e.user_id, "events")
            recent.add_all(list(keys))
    return IngestResult(
        accepted=len(fresh), duplicates=len(events) - len(fresh), rejected=len({e.index for e in errors}), errors=errors
    )
