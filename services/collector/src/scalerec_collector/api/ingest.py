"""Batch ingestion shared by events and items: per-element validation, the valid rest still accepted.

The request bodies are documented as :class:`EventBatch` and :class:`ItemBatch` (so ``/docs`` and
``/openapi.json`` show the Event and Item schemas a producer in any language can be written from) but
are not validated as those models: one invalid element would then reject the whole batch, while the
collector accepts the valid rest and names each invalid element's field (:func:`split_valid`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError
from scalerec_adapters.bus import OutgoingMessage, Producer
from scalerec_core.http import field_error, validation_errors
from scalerec_core.telemetry import inject_headers, meter, tracer
from scalerec_events.models import Event, Item

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class ElementError(BaseModel):
    index: int
    id: str | None = None
    field: str
    message: str
    # 422: the element is invalid; 413: it is valid but too large for the bus.
    status: int = 422


class EventBatch(BaseModel):
    """The body of POST /v1/events. Each event is validated on its own: an invalid one is reported in
    the answer's ``errors`` (with the field at fault) and the rest of the batch is accepted."""

    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, description="At most MAX_BATCH_EVENTS (1,000 by default) a request.")


class ItemBatch(BaseModel):
    """The body of POST /v1/items: upserts by ``item_id``, each item validated on its own."""

    model_config = ConfigDict(extra="forbid")

    items: list[Item] = Field(min_length=1, description="At most MAX_BATCH_ITEMS (1,000 by default) a request.")


def _as_received(value: Any) -> Any:
    if isinstance(value, bytes):  # FastAPI passes the raw body when its Content-Type is not JSON:
        raise ValueError("not JSON")  # the shared handler's 415 (scalerec_core.http) says what to send
    return value


# Body parameters that OpenAPI shows as the batch model and that reach the route as the parsed JSON, for
# split_valid to check element by element. Passing the JSON through costs nothing, where validating it as
# the model first would refuse a whole batch for one bad element.
EventBatchBody = Annotated[Any, PlainValidator(_as_received, json_schema_input_type=EventBatch)]
ItemBatchBody = Annotated[Any, PlainValidator(_as_received, json_schema_input_type=ItemBatch)]


# Room left in a bus message for its key (an id, at most 128 bytes) and headers (trace context).
_ENVELOPE_BYTES = 1024


class IngestResult(BaseModel):
    accepted: int
    duplicates: int = 0
    rejected: int
    errors: list[ElementError] = []


@functools.cache
def _list_adapter(model: type[M]) -> TypeAdapter[list[M]]:
    return TypeAdapter(list[model])  # type: ignore[valid-type]


# No object of an event or item has more fields than this (an item's attribute map holds at most 64):
# one with 400,000 unknown fields was 400,000 errors, seconds of the event loop and a 42 MB answer.
MAX_OBJECT_FIELDS = 256


def _crowded_object(raw: Any) -> tuple[str, int] | None:
    """(where, how many fields) of the element or of an object in it with over MAX_OBJECT_FIELDS fields."""
    if not isinstance(raw, dict):
        return None
    if len(raw) > MAX_OBJECT_FIELDS:
        return "", len(raw)
    for name, value in raw.items():
        if isinstance(value, dict) and len(value) > MAX_OBJECT_FIELDS:
            return str(name)[:100], len(value)
    return None


def split_valid(
    payload: Any, key: str, model: type[M], max_len: int, id_field: str, max_message_bytes: int | None = None
) -> tuple[list[M], list[ElementError]]:
    """Validate ``payload[key]`` element by element; raise a 4xx when the batch itself is malformed.

    With ``max_message_bytes``, a valid element whose encoding would not fit in one bus message is
    refused here (status 413 for that element), before anything of the batch is published: the bus
    would refuse it after the elements before it were already appended, and the caller would get a
    503 for a batch that was partly accepted.
    """
    if not isinstance(payload, dict) or key not in payload:
        raise field_error(422, "body", f"body must be an object with an '{key}' list")
    if len(payload) > 1:  # a misspelt or unsupported option must not pass for accepted
        unknown = sorted(str(name)[:100] for name in payload if name != key)
        names = ", ".join(repr(name) for name in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise field_error(422, unknown[0], f"unknown field(s) {names}: the body has only '{key}'")
    elements = payload[key]
    if not isinstance(elements, list):
        raise field_error(422, key, f"'{key}' must be a list")
    if not elements:
        raise field_error(422, key, f"'{key}' is empty")
    if len(elements) > max_len:
        raise field_error(413, key, f"batch of {len(elements)} {key} is over the limit of {max_len}")
    if max_message_bytes is None:
        # The common case, a batch without errors, in one pydantic call (no Python loop per element);
        # a batch with any invalid element is checked again element by element, for its errors.
        try:
            return _list_adapter(model).validate_python(elements), []
        except ValidationError:
            pass
    valid: list[M] = []
    errors: list[ElementError] = []
    for i, raw in enumerate(elements):
        ident = raw.get(id_field) if isinstance(raw, dict) else None
        ident_str = str(ident)[:200] if ident is not None else None
        crowded = _crowded_object(raw)
        if crowded is not None:
            where, count = crowded
            field = f"{key}[{i}]" + (f".{where}" if where else "")
            message = f"an object of {count} fields: at most {MAX_OBJECT_FIELDS}"
            errors.append(ElementError(index=i, id=ident_str, field=field, message=message))
            continue
        try:
            element = model.model_validate(raw)
        except ValidationError as exc:
            for err in validation_errors(exc, prefix=f"{key}[{i}]"):
                errors.append(ElementError(index=i, id=ident_str, field=err["field"], message=err["message"]))
            continue
        if max_message_bytes is not None:
            size = len(element.model_dump_json().encode()) + _ENVELOPE_BYTES
            if size > max_message_bytes:
                errors.append(
                    ElementError(
                        index=i,
                        id=ident_str,
                        field=f"{key}[{i}]",
                        message=f"{size} bytes on the bus, over its limit of {max_message_bytes} (MAX_MESSAGE_BYTES)",
                        status=413,
                    )
                )
                continue
        valid.append(element)
    return valid, errors


async def publish(producer: Producer, topic: str, records: Sequence[M], key_of: Callable[[M], str], kind: str) -> None:
    """Append records to the bus and return only once they are durable (then 202 is honest)."""
    with tracer("scalerec.collector").start_as_current_span(f"publish {kind}", attributes={"count": len(records)}):
        headers = tuple(inject_headers())
        # The bytes model_dump_json() would encode, without its str round trip.
        messages = [
            OutgoingMessage(value=r.__pydantic_serializer__.to_json(r), key=key_of(r).encode(), headers=headers)
            for r in records
        ]
        try:
            await producer.send_batch(topic, messages)
        except Exception as exc:
            log.warning("bus unavailable while publishing %d %s: %s", len(records), kind, exc)
            raise bus_unavailable(str(exc)) from exc
    meter("scalerec.collector").create_counter(f"collector.{kind}.accepted").add(len(records))


def bus_unavailable(why: str) -> HTTPException:
    """503: nothing of the batch was accepted, the client retries it."""
    return HTTPException(
        503, f"event bus unavailable, nothing of this batch was accepted; retry: {why}", headers={"Retry-After": "1"}
    )


def reject_all(errors: list[ElementError], kind: str) -> HTTPException:
    """422, or 413 when every element was refused only for its size."""
    fields = ", ".join(sorted({e.field for e in errors})[:10])
    code = 413 if errors and all(e.status == 413 for e in errors) else 422
    return HTTPException(
        code, {"message": f"every {kind} was rejected: {fields}", "errors": [e.model_dump() for e in errors]}
    )
