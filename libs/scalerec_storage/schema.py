"""Tables and row keys."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

from scalerec_adapters.store import TableSpec

SALT_BUCKETS = 16
_MAX_TS = (1 << 63) - 1
SEP = b"|"

INTERACTIONS = "interactions"  # salt|user|reversed ts|event_id → one interaction (newest first per user)
EVENT_INDEX = "event_index"  # event_id → interaction row key: dedupe and erasure
EXAMPLES = "examples"  # salt|user|ts|event_id → point-in-time training example (oldest first per user)
ITEM_DAILY = "item_daily"  # yyyymmdd|item → one cell per event: idempotent counters
CATALOGUE = "catalogue"  # salt|item → item JSON and content features
FRESH_ITEMS = "fresh_items"  # reversed created ts|item → newest items first
PROFILES = "profiles"  # salt|user → last seen, device, locale
ERASURES = "erasures"  # user → erased at (tombstone: older events for the user are dropped)
REPORTS = "reports"  # model|version → evaluation report JSON
EXPERIMENTS = "experiments"  # experiment id → experiment state JSON (the evaluator's, announced on the bus)
# Online exposure and outcome, one row per impression and per feedback event (idempotent by id):
#   experiment|request_id|i            → the impression (variant, version, items, time)
#   experiment|request_id|f|event_id   → one feedback event attributed to it
# ("-" for requests served outside experiments), so one prefix scan joins an experiment's
# impressions with their feedback, in request order.
EXPOSURES = "exposures"
REQUEST_INDEX = "request_index"  # request_id → experiment: where a feedback event's row goes
PENDING_FEEDBACK = "pending_feedback"  # request_id|event_id → feedback that arrived before its impression
NO_EXPERIMENT = "-"
# Online rows outlive any experiment's attribution window by far; results of ended experiments are
# kept in their experiment row.
_EXPOSURE_TTL_S = 180 * 86400

_SPLITS = tuple(format(i, "x").encode() for i in range(1, SALT_BUCKETS))


def tables() -> list[TableSpec]:
    return [
        TableSpec(INTERACTIONS, ("e",), split_keys=_SPLITS),
        TableSpec(EVENT_INDEX, ("m",)),
        TableSpec(EXAMPLES, ("x",), split_keys=_SPLITS),
        # Daily counters older than 60 days are of no use to trending.
        TableSpec(ITEM_DAILY, ("c",), ttl_seconds={"c": 60 * 86400}),
        TableSpec(CATALOGUE, ("d",), split_keys=_SPLITS),
        TableSpec(FRESH_ITEMS, ("d",)),
        TableSpec(PROFILES, ("p",), split_keys=_SPLITS),
        TableSpec(ERASURES, ("r",)),
        TableSpec(REPORTS, ("r",)),
        TableSpec(EXPERIMENTS, ("x",)),
        TableSpec(EXPOSURES, ("o",), ttl_seconds={"o": _EXPOSURE_TTL_S}),
        TableSpec(REQUEST_INDEX, ("o",), ttl_seconds={"o": _EXPOSURE_TTL_S}),
        TableSpec(PENDING_FEEDBACK, ("o",), ttl_seconds={"o": 7 * 86400}),
    ]


def salt(ident: str) -> bytes:
    return format(zlib.crc32(ident.encode()) % SALT_BUCKETS, "x").encode()


def ts_key(ts_ms: int) -> bytes:
    return format(ts_ms, "016x").encode()


def reversed_ts_key(ts_ms: int) -> bytes:
    return format(_MAX_TS - ts_ms, "016x").encode()


def user_prefix(user_id: str) -> bytes:
    return salt(user_id) + SEP + user_id.encode() + SEP


def interaction_key(user_id: str, ts_ms: int, event_id: str) -> bytes:
    return user_prefix(user_id) + reversed_ts_key(ts_ms) + SEP + event_id.encode()


def example_key(user_id: str, ts_ms: int, event_id: str) -> bytes:
    return user_prefix(user_id) + ts_key(ts_ms) + SEP + event_id.encode()


def profile_key(user_id: str) -> bytes:
    return salt(user_id) + SEP + user_id.encode()


def item_key(item_id: str) -> bytes:
    return salt(item_id) + SEP + item_id.encode()


def day_of(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y%m%d")


def item_daily_key(ts_ms: int, item_id: str) -> bytes:
    return day_of(ts_ms).encode() + SEP + item_id.encode()


def fresh_key(created_ms: int, item_id: str) -> bytes:
    return reversed_ts_key(created_ms) + SEP + item_id.encode()


def report_key(model: str, version: int) -> bytes:
    return f"{model}|{version:010d}".encode()


def exposure_prefix(experiment_id: str | None) -> bytes:
    return (experiment_id or NO_EXPERIMENT).encode() + SEP


def impression_row(experiment_id: str | None, request_id: str) -> bytes:
    return exposure_prefix(experiment_id) + request_id.encode() + SEP + b"i"


def feedback_row(experiment_id: str | None, request_id: str, event_id: str) -> bytes:
    return exposure_prefix(experiment_id) + request_id.encode() + SEP + b"f" + SEP + event_id.encode()


def pending_row(request_id: str, event_id: str) -> bytes:
    return request_id.encode() + SEP + event_id.encode()
