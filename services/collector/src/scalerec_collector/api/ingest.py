"""Batch ingestion shared by events and items: per-element validation, the valid rest still accepted."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import HTTPException
from pydantic import BaseModel, ValidationError
from scalerec_adapters.bus import OutgoingMessage, Producer
from scalerec_core.http import validation_errors
from scalerec_core.telemetry import inject_headers, meter, tracer

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class ElementError(BaseModel):
    index: int
    id: str | None = None
    field: str
    message: str


class IngestResult(BaseModel):
    accepted: int
    duplicates: int = 0
    rejected: int
    errors: list[ElementError] = []


def split_valid(
    payload: Any, key: str, model: type[M], max_len: int, id_field: str
) -> tuple[list[M], list[ElementError]]:
    """Validate ``payload[key]`` element by element; raise a 4xx when the batch itself is malformed."""
    if not isinstance(payload, dict) or key not in payload:
        raise HTTPException(422, f"body must be an object with a '{key}' list")
    elements = payload[key]
    if not isinstance(elements, list):
        raise HTTPException(422, f"'{key}' must be a list")
    if not elements:
        raise HTTPException(422, f"'{key}' is empty")
    if len(elements) > max_len:
        raise HTTPException(413, f"batch of {len(elements)} {key} is over the limit of {max_len}")
    valid: list[M] = []
    errors: list[ElementError] = []
    for i, raw in enumerate(elements):
        try:
            valid.append(model.model_validate(raw))
        except ValidationError as exc:
            ident = raw.get(id_field) if isinstance(raw, dict) else None
            for err in validation_errors(exc, prefix=f"{key}[{i}]"):
                errors.append(ElementError(index=i, id=str(ident) if ident is not None else None, **err))
    return valid, errors


async def publish(producer: Producer, topic: str, records: Sequence[M], key_of: Callable[[M], str], kind: str) -> None:
    """Append records to the bus and return only once they are durable (then 202 is honest)."""
    with tracer("scalerec.collector").start_as_current_span(f"publish {kind}", attributes={"count": len(records)}):
        headers = tuple(inject_headers())
        messages = [
            OutgoingMessage(value=r.model_dump_json().encode(), key=key_of(r).encode(), headers=headers)
            for r in records
        ]
        try:
            await producer.send_batch(topic, messages)
        except Exception as exc:
            log.warning("bus unavailable while publishing %d %s: %s", len(records), kind, exc)
            raise HTTPException(
                503,
                f"event bus unavailable, nothing of this batch was accepted; retry: {exc}",
                headers={"Retry-After": "1"},
            ) from exc
    meter("scalerec.collector").create_counter(f"collector.{kind}.accepted").add(len(records))


def reject_all(errors: list[ElementError], kind: str) -> HTTPException:
    fields = ", ".join(sorted({e.field for e in errors})[:10])
    return HTTPException(
        422, {"message": f"every {kind} was rejected: {fields}", "errors": [e.model_dump() for e in errors]}
    )
