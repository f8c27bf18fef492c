"""Versioned wire models.  ``schema_version`` lets a consumer refuse what it does not understand.

Everything here is validated at the edge (the collector) so that downstream
services can trust what they read from the bus.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from scalerec_features.definitions import Device as _Device

SCHEMA_VERSION = 1
# Clocks drift; anything further ahead than this is a client bug, not an event.
MAX_FUTURE_SKEW = timedelta(minutes=10)

# User, item and event ids: 1-128 characters of ASCII letters, digits and ``_ - . : @ ~``, not dots only.  No
# row-key separator, no whitespace, control, bidi or zero-width characters, nothing Unicode normalisation
# could change: an id is the same bytes everywhere (row keys, cache keys, logs). Not ``.`` or ``..``: in a
# path (``DELETE /v1/users/..``) clients, browsers and proxies resolve them away, so such a user could
# never be erased.
ID_MAX_LENGTH = 128
ID_PATTERN = r"^[A-Za-z0-9_\-.:@~]*[A-Za-z0-9_\-:@~][A-Za-z0-9_\-.:@~]*$"
Id = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]

# Size caps on what callers send (documented in docs/operations.md).  With them an item serialises to
# well under MAX_ITEM_BYTES, and the collector still checks the encoded size against the bus's limit.
MAX_ATTRIBUTES = 64
ATTRIBUTE_KEY_MAX_LENGTH = 64
ATTRIBUTE_VALUE_MAX_LENGTH = 1024
# Sum over the map of key and value lengths (values as text).
ATTRIBUTES_MAX_CHARS = 16 * 1024


class EventType(StrEnum):
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    RATING = "rating"
    IMPRESSION = "impression"


# Interactions that express interest (everything but an impression).
POSITIVE_TYPES = frozenset(
    {EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE, EventType.RATING}
)
CONVERSION_TYPES = frozenset({EventType.ADD_TO_CART, EventType.PURCHASE})

# The one device list: the features encode it, the wire accepts it.
Device = _Device


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Input(_Strict):
    """What callers send (through the collector): NaN and Infinity are refused in every float, nested too.

    JSON has no NaN, but Python's parser (and many clients) accept ``NaN``/``Infinity`` tokens; one
    such value would poison every sum and mean it reaches (popularity, price buckets, metrics).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Context(_Input):
    device: Device | None = None
    locale: Annotated[str, StringConstraints(max_length=16)] | None = None
    location: Annotated[str, StringConstraints(max_length=64)] | None = None
    session_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    referrer: Annotated[str, StringConstraints(max_length=512)] | None = None
    # Set on feedback to a recommendation so online metrics can attribute it.
    model_version: int | None = None
    request_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    # The experiment variant that answered that recommendation (the response's ``variant``).
    variant: Annotated[str, StringConstraints(max_length=32)] | None = None


def _utc(ts: datetime) -> datetime:
    """``ts`` in UTC (naive: taken as UTC). A time within hours of year 1 or 9999 with an offset has no
    UTC value (datetime's OverflowError, which pydantic would let through as a 500): refused as a value."""
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    try:
        return ts.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{ts.isoformat()} is out of range in UTC") from None


def _not_in_future(ts: datetime) -> datetime:
    if ts > datetime.now(UTC) + MAX_FUTURE_SKEW:
        raise ValueError(f"{ts.isoformat()} is more than {MAX_FUTURE_SKEW} in the future")
    return ts


class Event(_Input):
    schema_version: Literal[1] = 1
    event_id: Id
    user_id: Id
    item_id: Id
    type: EventType
    timestamp: datetime
    value: float | None = Field(default=None, ge=-1e9, le=1e9)
    context: Context = Context()

    @field_validator("timestamp")
    @classmethod
    def _timestamp_bounded(cls, ts: datetime) -> datetime:
        ts = _not_in_future(_utc(ts))
        if ts.year < 2000:
            raise ValueError(f"timestamp {ts.isoformat()} is before 2000")
        return ts

    @model_validator(mode="after")
    def _rating_has_value(self) -> Event:
        if self.type is EventType.RATING and self.value is None:
            raise ValueError("a rating event needs a value")
        return self

    @property
    def ts_ms(self) -> int:
        return int(self.timestamp.timestamp() * 1000)


AttributeValue = Annotated[str, StringConstraints(max_length=ATTRIBUTE_VALUE_MAX_LENGTH)] | int | float | bool
AttributeKey = Annotated[str, StringConstraints(max_length=ATTRIBUTE_KEY_MAX_LENGTH)]


class Item(_Input):
    schema_version: Literal[1] = 1
    item_id: Id
    category: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "unknown"
    price: float | None = Field(default=None, ge=0, le=1e9)
    title: Annotated[str, StringConstraints(max_length=512)] = ""
    text: Annotated[str, StringConstraints(max_length=8192)] = ""
    attributes: dict[AttributeKey, AttributeValue] = Field(
        default_factory=dict,
        description=(
            f"At most {MAX_ATTRIBUTES} entries, keys up to {ATTRIBUTE_KEY_MAX_LENGTH} characters, text values up to "
            f"{ATTRIBUTE_VALUE_MAX_LENGTH}, {ATTRIBUTES_MAX_CHARS} characters of keys and values in all."
        ),
    )
    created_at: datetime | None = Field(default=None, description="Not more than 10 minutes in the future.")
    available: bool = True

    @field_validator("attributes", mode="before")
    @classmethod
    def _attribute_values(cls, attrs: Any) -> Any:
        """One clear error per bad value (the union's own would list one complaint per member type)."""
        if not isinstance(attrs, dict):
            return attrs
        for key, value in attrs.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"attribute {str(key)[:64]!r}: {value} is not a finite number")
            if isinstance(value, str) and len(value) > ATTRIBUTE_VALUE_MAX_LENGTH:
                raise ValueError(
                    f"attribute {str(key)[:64]!r}: {len(value)} characters, at most {ATTRIBUTE_VALUE_MAX_LENGTH}"
                )
            if not isinstance(value, str | int | float | bool):
                raise ValueError(f"attribute {str(key)[:64]!r}: must be a string, number or boolean")
        return attrs

    @field_validator("attributes")
    @classmethod
    def _few_attributes(cls, attrs: dict[str, Any]) -> dict[str, Any]:
        if len(attrs) > MAX_ATTRIBUTES:
            raise ValueError(f"{len(attrs)} attributes, at most {MAX_ATTRIBUTES}")
        chars = sum(len(k) + len(str(v)) for k, v in attrs.items())
        if chars > ATTRIBUTES_MAX_CHARS:
            raise ValueError(f"{chars} characters of keys and values, at most {ATTRIBUTES_MAX_CHARS}")
        return attrs

    @field_validator("created_at")
    @classmethod
    def _created_utc(cls, ts: datetime | None) -> datetime | None:
        return None if ts is None else _not_in_future(_utc(ts))


class ErasureRequest(_Input):
    schema_version: Literal[1] = 1
    request_id: Id
    user_id: Id
    requested_at: datetime


class TrainingExample(_Strict):
    """One interaction with the features it had *at the time it happened* (point in time)."""

    schema_version: Literal[1] = 1
    event_id: str
    user_id: str
    item_id: str
    type: EventType
    ts_ms: int
    value: float | None = None
    # Items the user interacted with strictly before this event, oldest first.
    history: list[str]
    context: dict[str, int]
    # Item features as of ts_ms (category, price bucket, popularity so far).
    item: dict[str, int]
    label_click: int = Field(description="1 unless the event is a view.")
    label_conversion: int = Field(
        description="1 when the event is a conversion (scalerec_events.labels.is_conversion: add to cart, "
        "purchase, or a rating >= 4); the trainer's conversion head learns the same rule from type and value."
    )


class ImpressedItem(_Strict):
    item_id: str
    position: int = Field(ge=0)
    source: str
    score: float | None = None


class Impression(_Strict):
    """What one recommendation answer showed (``events.impressions``): the exposure side of online metrics.

    Written by the ranker, read by the evaluator; feedback events point back to it through
    ``context.request_id``.
    """

    schema_version: Literal[1] = 1
    request_id: str
    user_id: str
    model_version: int | None = None
    # Set while an experiment runs: the experiment and the variant this user is assigned to (also when
    # the answer fell back to a baseline, so results count every assigned user: intent to treat).
    experiment_id: str | None = None
    variant: str | None = None
    fallback: bool = False
    fallback_reason: str | None = None
    scorer: str | None = None
    items: list[ImpressedItem] = Field(default_factory=list)
    context: Context = Context()
    ts_ms: int


class ModelAnnouncement(_Strict):
    """A trained model version (``models.candidate``) or a promoted one (``models.promoted``)."""

    schema_version: Literal[1] = 1
    model: str
    version: int = Field(ge=1)
    repository: str
    created_at: datetime
    metrics: dict[str, float] = Field(default_factory=dict)
    data_window: dict[str, int] = Field(default_factory=dict)
    feature_version: int = 1
