"""DELETE /v1/users/{user_id}: erasure requests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, ValidationError
from scalerec_core.auth import Scope, require
from scalerec_core.http import StrictQueryRoute, validation_errors
from scalerec_events.models import ID_MAX_LENGTH, ID_PATTERN, ErasureRequest
from scalerec_events.topics import Topic

from scalerec_collector.api.ingest import publish
from scalerec_collector.deps import ProducerDep, SettingsDep

router = APIRouter(prefix="/v1", tags=["privacy"], dependencies=[require(Scope.ERASE)], route_class=StrictQueryRoute)


class ErasureAccepted(BaseModel):
    request_id: str
    user_id: str
    status: str = "accepted"


@router.delete(
    "/users/{user_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ErasureAccepted,
    summary="Erase everything known about a user",
)
async def erase_user(
    user_id: Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)],
    producer: ProducerDep,
    settings: SettingsDep,
) -> ErasureAccepted:
    """Carried on its own topic; the preprocessor removes the user's history, counters, examples and cache."""
    try:
        request = ErasureRequest(request_id=uuid.uuid4().hex, user_id=user_id, requested_at=datetime.now(UTC))
    except ValidationError as exc:
        raise HTTPException(422, {"message": "invalid user_id", "errors": validation_errors(exc)}) from exc
    await publish(producer, settings.topic(Topic.ERASURE), [request], lambda r: r.user_id, "erasures")
    return ErasureAccepted(request_id=request.request_id, user_id=user_id)
