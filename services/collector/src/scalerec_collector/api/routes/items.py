"""POST /v1/items."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, status
from scalerec_core.auth import Scope, require
from scalerec_core.http import StrictQueryRoute
from scalerec_events.models import Item
from scalerec_events.topics import Topic

from scalerec_collector.api.ingest import IngestResult, ItemBatchBody, publish, reject_all, split_valid
from scalerec_collector.deps import ProducerDep, SettingsDep

router = APIRouter(prefix="/v1", tags=["items"], dependencies=[require(Scope.INGEST)], route_class=StrictQueryRoute)

_EXAMPLE = {
    "items": [
        {
            "item_id": "i00017",
            "category": "running shoes",
            "price": 89.9,
            "title": "Trail runner mesh",
            "attributes": {"brand": "Acme", "color": "blue"},
        }
    ]
}


@router.post(
    "/items",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IngestResult,
    summary="Create or update catalogue items",
    responses={
        400: {"description": "Malformed JSON"},
        413: {"description": "Batch or body too large, or every item too large for the bus"},
        415: {"description": "The body's Content-Type is not JSON"},
        422: {"description": "Every item was invalid (each error names its field)"},
        503: {"description": "Bus unavailable; nothing was accepted, retry"},
    },
)
async def post_items(
    payload: Annotated[ItemBatchBody, Body(openapi_examples={"one item": {"value": _EXAMPLE}})],
    settings: SettingsDep,
    producer: ProducerDep,
) -> IngestResult:
    """Upserts by ``item_id``; content (category, price, title, text) makes new items recommendable at once.

    Each item is checked on its own: an invalid one is reported in ``errors`` with status 422 and the
    field at fault, one too large for the bus with status 413; the rest of the batch is accepted.
    """
    items, errors = split_valid(
        payload, "items", Item, settings.max_batch_items, "item_id", max_message_bytes=settings.max_message_bytes
    )
    if not items:
        raise reject_all(errors, "item")
    await publish(producer, settings.topic(Topic.ITEMS), items, lambda i: i.item_id, "items")
    return IngestResult(accepted=len(items), rejected=len({e.index for e in errors}), errors=errors)
