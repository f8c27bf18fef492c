"""Tables and row keys.

Row keys are built from escaped parts: every id is percent-escaped (``%`` → ``%25``, the separator
``|`` → ``%7C``, and any byte outside printable ASCII) before it goes between separators, so an
escaped part never contains ``|``.  A crafted id therefore cannot make one user's key prefix match
another user's rows (``u`` and ``u|x`` have the prefixes ``s|u|`` and ``s|u%7Cx|``).  Ids that follow
the wire rules (``scalerec_events.models.ID_PATTERN``) escape to themselves, so rows written before
escaping keep their keys.
"""

from __future__ import annotations

import functools
import hashlib
import re
import zlib
from datetime import UTC, datetime

from scalerec_adapters.store import TableSpec

SALT_BUCKETS = 16
_MAX_TS = (1 << 63) - 1
SEP = b"|"

INTERACTIONS = "interactions"  # salt|user|reversed ts|event_id → one interaction (newest first per user)
EVENT_INDEX = "event_index"  # salt|user|event_id → interaction row key and ingest time: dedupe and erasure
EXAMPLES = "examples"  # salt|user|ts|event_id → point-in-time training example (oldest first per user)
ITEM_DAILY = "item_daily"  # yyyymmdd|item → one cell per event: idempotent counters
CATALOGUE = "catalogue"  # salt|item → item JSON and content features
FRESH_ITEMS = "fresh_items"  # reversed created ts|item → newest items first
PROFILES = "profiles"  # salt|user → last seen, device, locale
ERASURES = "erasures"  # user → erased at / done at (tombstone: events ingested until then are dropped)
REPORTS = "reports"  # model|version → evaluation report JSON; promotion|model → the promotion in progress
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


_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:@~")
# Any byte outside the id alphabet (a regex search in C: this runs several times per ingested event).
_UNSAFE = re.compile(rb"[^A-Za-z0-9_\-.:@~]")


def escape(ident: str) -> bytes:
    """One row-key part: ``ident`` as UTF-8 with every byte outside the id alphabet as ``%XX``.

    The result never contains the separator; ids of the wire alphabet are returned unchanged.
    """
    raw = ident.encode("utf-8", "surrogatepass")
    if _UNSAFE.search(raw) is None:
        return raw
    return b"".join(bytes([b]) if b in _SAFE else b"%%%02X" % b for b in raw)


def unescape(part: bytes) -> str:
    """Inverse of :func:`escape`."""
    if b"%" not in part:
        return part.decode()
    out = bytearray()
    i = 0
    while i < len(part):
        if part[i] == 0x25:  # '%'
            out.append(int(part[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(part[i])
            i += 1
    return out.decode("utf-8", "surrogatepass")


def ts_key(ts_ms: int) -> bytes:
    return format(ts_ms, "016x").encode()


def reversed_ts_key(ts_ms: int) -> bytes:
    return format(_MAX_TS - ts_ms, "016x").encode()


@functools.lru_cache(maxsize=65_536)
def user_prefix(user_id: str) -> bytes:
    """Every row of one user (interactions, examples, index) starts with this, and no other user's does.

    Cached: the preprocessor builds three or four keys per event, mostly for users it saw recently.
    """
    return salt(user_id) + SEP + escape(user_id) + SEP


def interaction_key(user_id: str, ts_ms: int, event_id: str) -> bytes:
    return user_prefix(user_id) + reversed_ts_key(ts_ms) + SEP + escape(event_id)


def example_key(user_id: str, ts_ms: int, event_id: str) -> bytes:
    return user_prefix(user_id) + ts_key(ts_ms) + SEP + escape(event_id)


def event_index_key(user_id: str, event_id: str) -> bytes:
    """Dedupe is per user: the same event id sent for two users is two events, and erasing one user
    removes only that user's index rows."""
    return user_prefix(user_id) + escape(event_id)


def last_part(key: bytes) -> str:
    """The id after a key's last separator (the event id of interaction and example keys, ...)."""
    return unescape(key.rsplit(SEP, 1)[-1])


def after_first(key: bytes) -> str:
    """The id after a key's first separator (the item of catalogue and daily-counter keys)."""
    return unescape(key.split(SEP, 1)[1])


def profile_key(user_id: str) -> bytes:
    return salt(user_id) + SEP + escape(user_id)


def erasure_key(user_id: str) -> bytes:
    return escape(user_id)


def item_key(item_id: str) -> bytes:
    return salt(item_id) + SEP + escape(item_id)


def day_of(ts_ms: int) -> str:
    return _day(ts_ms // 86_400_000)


@functools.lru_cache(maxsize=4096)
def _day(day: int) -> str:
    # strftime per event was a few per cent of ingest; there are few distinct days in a batch.
    return datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y%m%d")


def item_daily_key(ts_ms: int, item_id: str) -> bytes:
    return day_of(ts_ms).encode() + SEP + escape(item_id)


def item_daily_column(event_type: str, user_id: str, event_id: str) -> bytes:
    """One counter cell per (user, event): the same event id under two users counts twice, a
    re-delivery of one event rewrites its own cell.  The user is a digest, not the id in clear."""
    digest = hashlib.sha256(escape(user_id)).hexdigest()[:16]
    return b"c:" + event_type.encode() + b":" + escape(event_id) + SEP + digest.encode()


def legacy_item_daily_column(event_type: str, event_id: str) -> bytes:
    """The counter cell written before counters were per user (read as a count; erased with its user)."""
    return b"c:" + event_type.encode() + b":" + escape(event_id)


def fresh_key(created_ms: int, item_id: str) -> bytes:
    return reversed_ts_key(created_ms) + SEP + escape(item_id)


def report_key(model: str, version: int) -> bytes:
    return f"{model}|{version:010d}".encode()


def promotion_key(model: str) -> bytes:
    """The evaluator's last promotion of ``model`` and whether it was announced (outside the reports' prefix)."""
    return f"promotion|{model}".encode()


def exposure_prefix(experiment_id: str | None) -> bytes:
    return (experiment_id or NO_EXPERIMENT).encode() + SEP


def impression_row(experiment_id: str | None, request_id: str) -> bytes:
    return exposure_prefix(experiment_id) + request_id.encode() + SEP + b"i"


def feedback_row(experiment_id: str | None, request_id: str, event_id: str) -> bytes:
    return exposure_prefix(experiment_id) + request_id.encode() + SEP + b"f" + SEP + event_id.encode()


def pending_row(request_id: str, event_id: str) -> bytes:
    return request_id.encode() + SEP + event_id.encode()
