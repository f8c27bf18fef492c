"""Typed reads and writes on the store's tables (synchronous; async callers use ``asyncio.to_thread``)."""

from __future__ import annotations

import contextlib
import functools
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from pydantic_core import to_json
from scalerec_adapters.cache import Cache, CacheKeys
from scalerec_adapters.store import WideColumnStore, prefix_successor
from scalerec_events.models import Event, EventType, Item, TrainingExample
from scalerec_features import FEATURE_VERSION, item_feature_vector

from scalerec_storage import schema as s

# How much each interaction says about interest, for trending and popularity.
TYPE_WEIGHTS = {
    EventType.VIEW: 1.0,
    EventType.CLICK: 1.5,
    EventType.ADD_TO_CART: 3.0,
    EventType.PURCHASE: 5.0,
    EventType.RATING: 2.0,
    EventType.IMPRESSION: 0.0,
}


_TYPE_NAMES = {t.value: t.value for t in EventType}


class HistoryEntry(NamedTuple):
    """One entry of a user's interest history.

    A named tuple, not a dataclass: the ranker and the preprocessor build one per history item on
    their hot paths (0.23 µs against 0.84 for a frozen dataclass).  Decoded entries share one string
    per event type instead of one each (the preprocessor keeps hundreds of thousands in memory).
    """

    item_id: str
    ts_ms: int
    type: str
    event_id: str
    # When the bus accepted the event (0: unknown, a row written before it was recorded); not cached.
    ingest_ms: int = 0

    @classmethod
    def from_list(cls, raw: Sequence[str | int]) -> HistoryEntry:
        item, ts, etype, event_id = raw
        etype = str(etype)
        return cls(str(item), int(ts), _TYPE_NAMES.get(etype, etype), str(event_id))


# ---------------------------------------------------------------- interactions


# One cell per interaction: [item, ts_ms, type, value, session, device, locale, ingest_ms]. One cell instead
# of six is most of the write cost of an event; the model context (hour, weekday, ...) is derivable from it.
# ingest_ms (when the bus accepted the event) is what an erasure's tombstone is compared with.
INTERACTION = b"e:d"


def interaction_cells(event: Event, ts_ms: int | None = None, ingest_ms: int = 0) -> dict[bytes, bytes]:
    ctx = event.context
    ts = event.ts_ms if ts_ms is None else ts_ms
    packed = [event.item_id, ts, event.type.value, event.value, ctx.session_id, ctx.device, ctx.locale, ingest_ms]
    return {INTERACTION: json.dumps(packed).encode()}


def _unpack(row_key: bytes, cells: dict[bytes, bytes]) -> tuple[HistoryEntry, list[object]]:
    event_id = s.last_part(row_key)
    packed = cells.get(INTERACTION)
    if packed is None:  # written before interactions were packed: e:item, e:ts, e:type, ...
        item, ts, etype = cells[b"e:item"].decode(), int(cells[b"e:ts"]), cells[b"e:type"].decode()
        return HistoryEntry(item, ts, etype, event_id), [item, ts, etype, None, None, None, None]
    fields = json.loads(packed)
    ingest = int(fields[7]) if len(fields) > 7 and fields[7] else 0
    return HistoryEntry(fields[0], int(fields[1]), fields[2], event_id, ingest), fields


def _entry(row_key: bytes, cells: dict[bytes, bytes]) -> HistoryEntry:
    return _unpack(row_key, cells)[0]


def recent_history(
    store: WideColumnStore, user_id: str, limit: int, before_ts_ms: int | None = None
) -> list[HistoryEntry]:
    """The user's last ``limit`` interactions (before ``before_ts_ms`` if given), oldest first."""
    prefix = s.user_prefix(user_id)
    start = prefix + s.reversed_ts_key(before_ts_ms - 1) if before_ts_ms is not None else None
    out: list[HistoryEntry] = []
    cols = [b"e"]  # the family: packed rows have one cell, older rows their six
    if start is None:
        rows = store.scan(s.INTERACTIONS, prefix=prefix, columns=cols, limit=limit, batch_size=min(limit, 1000))
    else:
        rows = store.scan(s.INTERACTIONS, start=start, stop=prefix_successor(prefix), columns=cols, limit=limit)
    got = list(rows)
    packed = [cells[INTERACTION] for _, cells in got if INTERACTION in cells]
    if len(packed) == len(got):
        # One JSON parse for the whole history instead of one per row: most of a cache miss's CPU.
        for (key, _), fields in zip(got, json.loads(b"[" + b",".join(packed) + b"]"), strict=True):
            ingest = int(fields[7]) if len(fields) > 7 and fields[7] else 0
            out.append(HistoryEntry(fields[0], int(fields[1]), fields[2], s.last_part(key), ingest))
    else:  # rows written before interactions were packed
        out.extend(_entry(key, cells) for key, cells in got)
    out.reverse()
    return out


def history_cache_key(keys: CacheKeys, user_id: str) -> str:
    return keys.key("hist", FEATURE_VERSION, user_id)


def cached_history(
    store: WideColumnStore, cache: Cache, keys: CacheKeys, user_id: str, limit: int, ttl_seconds: int = 3600
) -> tuple[list[HistoryEntry], str]:
    """History from the hot cache, else the store (and refill the cache). Returns (history, "cache"|"store")."""
    key = history_cache_key(keys, user_id)
    try:
        raw = cache.get(key)
    except Exception:
        raw = None  # a broken cache is a miss, never an error
    if raw is not None:
        return list(_decode_history(bytes(raw))[-limit:]), "cache"
    history = recent_history(store, user_id, limit)
    with contextlib.suppress(Exception):
        cache.set(key, encode_history(history), ttl_seconds)
    return history, "store"


def bought_cache_key(keys: CacheKeys, user_id: str) -> str:
    return keys.key("bought", FEATURE_VERSION, user_id)


def read_cached_user_state(
    cache: Cache, keys: CacheKeys, user_id: str, limit: int
) -> tuple[list[HistoryEntry] | None, set[str] | None]:
    """(recent history, items ever bought) from the cache in one round trip; None for what missed."""
    try:
        hits = cache.get_many([history_cache_key(keys, user_id), bought_cache_key(keys, user_id)])
    except Exception:
        return None, None  # a broken cache is a miss, never an error
    raw_h = hits.get(history_cache_key(keys, user_id))
    raw_b = hits.get(bought_cache_key(keys, user_id))
    history = list(_decode_history(bytes(raw_h))[-limit:]) if raw_h is not None else None
    return history, (set(_decode_bought(bytes(raw_b))) if raw_b is not None else None)


def encode_history(history: Sequence[HistoryEntry]) -> bytes:
    """A history as the cache holds it: ``[[item, ts_ms, type, event_id], ...]`` (no ingest time), compact
    JSON in one pydantic-core call (a third of ``json.dumps`` of list rows, which the preprocessor
    paid for every user of every batch)."""
    return to_json([h[:4] for h in history])


@functools.lru_cache(maxsize=4096)
def _decode_history(raw: bytes) -> tuple[HistoryEntry, ...]:
    """A cached history entry, decoded once per distinct value: the ranker reads the same entry for
    every request of a user until it changes.  Entries are immutable (named tuples in a tuple),
    so answers share them safely; at most 4,096 values (~10 KB each with 50 entries) per process."""
    return tuple(HistoryEntry.from_list(x) for x in json.loads(raw))


@functools.lru_cache(maxsize=4096)
def _decode_bought(raw: bytes) -> frozenset[str]:
    return frozenset(json.loads(raw))


def cached_user_state(
    store: WideColumnStore, cache: Cache, keys: CacheKeys, user_id: str, limit: int, ttl_seconds: int = 3600
) -> tuple[list[HistoryEntry], set[str], str]:
    """Recent history and every item ever bought: the cache first, the store only for what missed.

    Returns (history oldest first, bought item ids, "cache" | "store").  The preprocessor keeps the
    history entry current and drops the bought entry when a purchase arrives; a miss reads the store
    and refills the cache for ``ttl_seconds``.
    """
    history, bought = read_cached_user_state(cache, keys, user_id, limit)
    history, bought, source, refill = fill_user_state(store, keys, user_id, limit, history, bought)
    if refill:
        with contextlib.suppress(Exception):
            cache.set_many(refill, ttl_seconds)
    return history, bought, source


def fill_user_state(
    store: WideColumnStore,
    keys: CacheKeys,
    user_id: str,
    limit: int,
    history: list[HistoryEntry] | None,
    bought: set[str] | None,
) -> tuple[list[HistoryEntry], set[str], str, dict[str, bytes]]:
    """What the cache did not answer (None) read from the store, with the cache entries to write back
    (the caller writes them: the ranker times the cache and the store apart, for their breakers)."""
    refill: dict[str, bytes] = {}
    source = "cache"
    if history is None:
        history, source = recent_history(store, user_id, limit), "store"
        refill[history_cache_key(keys, user_id)] = encode_history(history)
    if bought is None:
        bought = purchased_items(store, user_id)
        refill[bought_cache_key(keys, user_id)] = json.dumps(sorted(bought)).encode()
    return history, bought, source, refill


def timeline_cache_key(keys: CacheKeys, user_id: str) -> str:
    """The preprocessor's own copy of a user's last interest entries (never written by anyone else)."""
    return keys.key("timeline", FEATURE_VERSION, user_id)


def merge_history(current: Sequence[HistoryEntry], new: Iterable[HistoryEntry], limit: int) -> list[HistoryEntry]:
    """Union by event_id, oldest first, the last ``limit`` kept (re-delivery safe)."""
    by_id = {h.event_id: h for h in current}
    for h in new:
        by_id[h.event_id] = h
    merged = sorted(by_id.values(), key=lambda h: (h.ts_ms, h.event_id))
    return merged[-limit:]


def count_interactions(store: WideColumnStore, user_id: str | None = None) -> int:
    prefix = s.user_prefix(user_id) if user_id else None
    return sum(1 for _ in store.scan(s.INTERACTIONS, prefix=prefix, columns=[b"e"], batch_size=5000))


PURCHASED = b"p:bought:"


def purchase_cells(event: Event, ts_ms: int | None = None) -> tuple[bytes, bytes]:
    """A profile cell per purchased item (idempotent: a re-delivered purchase rewrites the same cell)."""
    return PURCHASED + event.item_id.encode(), str(event.ts_ms if ts_ms is None else ts_ms).encode()


def purchased_items(store: WideColumnStore, user_id: str) -> set[str]:
    cells = store.get(s.PROFILES, s.profile_key(user_id), columns=[b"p"])
    return {col[len(PURCHASED) :].decode() for col in cells if col.startswith(PURCHASED)}


# ---------------------------------------------------------------- catalogue


def catalogue_cells(item: Item) -> dict[bytes, bytes]:
    features = item_feature_vector(item.category, item.price, item.title, item.text)
    return {b"d:json": item.model_dump_json().encode(), b"d:features": json.dumps(features).encode()}


def get_items(store: WideColumnStore, item_ids: Sequence[str]) -> dict[str, Item]:
    rows = store.get_many(s.CATALOGUE, [s.item_key(i) for i in item_ids], columns=[b"d:json"])
    out = {}
    for cells in rows.values():
        item = Item.model_validate_json(cells[b"d:json"])
        out[item.item_id] = item
    return out


def get_item_features(store: WideColumnStore, item_ids: Sequence[str]) -> dict[str, list[int]]:
    """Content feature vectors computed when the item was stored (no re-tokenising per event)."""
    rows = store.get_many(s.CATALOGUE, [s.item_key(i) for i in item_ids], columns=[b"d:features"])
    out = {}
    for key, cells in rows.items():
        if b"d:features" in cells:
            out[s.after_first(key)] = json.loads(cells[b"d:features"])
    return out


def scan_catalogue(store: WideColumnStore) -> Iterator[tuple[Item, list[int]]]:
    for _, cells in store.scan(s.CATALOGUE, columns=[b"d"], batch_size=2000):
        yield Item.model_validate_json(cells[b"d:json"]), json.loads(cells[b"d:features"])


def fresh_items(store: WideColumnStore, limit: int) -> list[str]:
    return [s.last_part(key) for key, _ in store.scan(s.FRESH_ITEMS, columns=[b"d:id"], limit=limit, batch_size=limit)]


# ---------------------------------------------------------------- item statistics


def item_daily_cells(event: Event, ts_ms: int | None = None) -> tuple[bytes, dict[bytes, bytes]]:
    """One cell per (user, event): a re-delivered event rewrites its own cell instead of counting twice."""
    key = s.item_daily_key(event.ts_ms if ts_ms is None else ts_ms, event.item_id)
    return key, {s.item_daily_column(event.type.value, event.user_id, event.event_id): b"1"}


def item_scores(store: WideColumnStore, since_day: str | None = None) -> dict[str, float]:
    """Interest-weighted interaction counts per item since ``since_day`` (YYYYMMDD), from the daily counters."""
    scores: dict[str, float] = defaultdict(float)
    start = since_day.encode() if since_day else None
    for key, cells in store.scan(s.ITEM_DAILY, start=start, batch_size=2000):
        item_id = s.after_first(key)
        for col in cells:
            etype = col.split(b":", 2)[1].decode()
            scores[item_id] += TYPE_WEIGHTS.get(EventType(etype), 0.0) if etype in EventType._value2member_map_ else 0
    return dict(scores)


# ---------------------------------------------------------------- training examples


def example_cells(example: TrainingExample | bytes, ingest_ms: int = 0) -> dict[bytes, bytes]:
    """An example's row; pass its JSON when it is already serialised (the bus carries the same bytes).

    ``x:at`` is when the bus accepted the event it was made from (erasure compares it with the tombstone).
    """
    payload = example if isinstance(example, bytes) else example.model_dump_json().encode()
    return {b"x:json": payload, b"x:at": str(ingest_ms).encode()}


def index_cells(ingest_ms: int) -> dict[bytes, bytes]:
    """The dedupe index row of one (user, event): when it was ingested (erasure compares it with the tombstone).

    One cell: the interaction's row key it once held too (``m:row``) is derivable from the
    interaction itself and was only ever read back for index rows keyed by the bare event id,
    which keep theirs (``erase_user``).  Readers of the index ask for the family ``m``.
    """
    return {b"m:at": str(ingest_ms).encode()}


def scan_examples(store: WideColumnStore, batch_size: int = 2000) -> Iterator[TrainingExample]:
    """All examples, grouped by user and in time order within a user (streamed, not loaded whole)."""
    for _, cells in store.scan(s.EXAMPLES, columns=[b"x:json"], batch_size=batch_size):
        yield TrainingExample.model_validate_json(cells[b"x:json"])


def count_rows(store: WideColumnStore, table: str) -> int:
    return sum(1 for _ in store.scan(table, batch_size=5000, columns=None))


# ---------------------------------------------------------------- erasure


def erased_at(store: WideColumnStore, user_ids: Sequence[str]) -> dict[str, int]:
    """Each erased user's tombstone: events the bus accepted at or before it are the erased user's."""
    keys = {s.erasure_key(u): u for u in user_ids}
    rows = store.get_many(s.ERASURES, list(keys), columns=[b"r:at"])
    return {keys[k]: int(v[b"r:at"]) for k, v in rows.items() if k in keys}


def erasure_done(store: WideColumnStore, user_ids: Sequence[str]) -> dict[str, int]:
    """Up to which tombstone each user's erasure has finished (absent: none finished yet)."""
    keys = {s.erasure_key(u): u for u in user_ids}
    rows = store.get_many(s.ERASURES, list(keys), columns=[b"r:done"])
    return {keys[k]: int(v[b"r:done"]) for k, v in rows.items() if k in keys and b"r:done" in v}


def _at(cells: dict[bytes, bytes], column: bytes) -> int:
    raw = cells.get(column)
    return int(raw) if raw else 0  # written before ingest times were kept: as old as can be


def _profile_cells(kept: list[list[object]]) -> dict[bytes, bytes]:
    """A profile rebuilt from interactions (packed fields), oldest first."""
    last = kept[-1]
    profile = {
        b"p:last_ts": str(last[1]).encode(),
        b"p:device": str(last[5] or "").encode(),
        b"p:locale": str(last[6] or "").encode(),
    }
    for fields in kept:
        if fields[2] == EventType.PURCHASE.value:
            profile[PURCHASED + str(fields[0]).encode()] = str(fields[1]).encode()
    return profile


def user_cache_keys(keys: CacheKeys, user_id: str) -> list[str]:
    """Every cache entry that holds something of one user."""
    return [history_cache_key(keys, user_id), bought_cache_key(keys, user_id), timeline_cache_key(keys, user_id)]


def erase_user(
    store: WideColumnStore, cache: Cache, keys: CacheKeys, user_id: str, erased_at_ms: int
) -> dict[str, int]:
    """Remove everything of a user the bus accepted until ``erased_at_ms``: interactions, their item
    counters, examples, dedupe index, profile, and the cache on every node.

    Race-free with the events consumer (``scalerec_preprocessor.consumers.events``):

    * the tombstone is written first, so a batch that reads tombstones afterwards drops the user's
      events ingested until then;
    * a batch that read them before and wrote during the scans finds the tombstone when it checks
      again after its writes, and runs this function itself (everything here is idempotent);
    * rows of events ingested later (the user came back) are kept, so re-running it never loses
      data accepted after the request.

    A cache delete that fails raises (``CacheUnavailable``): the erasure is retried, never half done.
    """
    at = max(erased_at_ms, erased_at(store, [user_id]).get(user_id, -1))
    tombstone = s.erasure_key(user_id)
    # Tombstone first: events of this user still in flight are dropped from here on.
    store.put(s.ERASURES, tombstone, {b"r:at": str(at).encode()})
    prefix = s.user_prefix(user_id)
    interaction_rows: list[bytes] = []
    legacy_index: list[bytes] = []
    daily: dict[bytes, list[bytes]] = defaultdict(list)
    for key, cells in store.scan(s.INTERACTIONS, prefix=prefix, columns=[b"e"]):
        entry, _ = _unpack(key, cells)
        if entry.ingest_ms > at:
            continue  # ingested after the tombstone: the user came back
        interaction_rows.append(key)
        legacy_index.append(s.escape(entry.event_id))
        daily[s.item_daily_key(entry.ts_ms, entry.item_id)] += [
            s.item_daily_column(entry.type, user_id, entry.event_id),
            s.legacy_item_daily_column(entry.type, entry.event_id),
        ]
    example_rows = [k for k, c in store.scan(s.EXAMPLES, prefix=prefix, columns=[b"x"]) if _at(c, b"x:at") <= at]
    index_rows = [k for k, c in store.scan(s.EVENT_INDEX, prefix=prefix, columns=[b"m"]) if _at(c, b"m:at") <= at]
    # Index rows from before dedupe was per user are keyed by the bare event id: only this user's go.
    for key, cells in store.get_many(s.EVENT_INDEX, legacy_index, columns=[b"m:row"]).items():
        if cells.get(b"m:row", b"").startswith(prefix):
            index_rows.append(key)
    for row, cols in daily.items():
        store.delete(s.ITEM_DAILY, row, cols)
    store.delete_many(s.EXAMPLES, example_rows)
    store.delete_many(s.INTERACTIONS, interaction_rows)
    store.delete_many(s.EVENT_INDEX, index_rows)
    store.delete(s.PROFILES, s.profile_key(user_id))
    # The profile is rebuilt from what is kept as read AFTER deleting it: a batch of the user's later
    # events writes its interactions before its profile cells (``put_tables`` order), so if its profile
    # cells were among those just deleted, this scan sees its interactions and keeps their purchases.
    kept: list[tuple[int, list[object]]] = []
    for key, cells in store.scan(s.INTERACTIONS, prefix=prefix, columns=[b"e"]):
        entry, fields = _unpack(key, cells)
        if entry.ingest_ms > at:
            kept.append((entry.ts_ms, fields))
    if kept:
        kept.sort(key=lambda k: k[0])
        store.put(s.PROFILES, s.profile_key(user_id), _profile_cells([f for _, f in kept]))
    cache.purge(user_cache_keys(keys, user_id))
    store.put(s.ERASURES, tombstone, {b"r:done": str(at).encode()})
    return {
        "interactions": len(interaction_rows),
        "examples": len(example_rows),
        "index": len(index_rows),
        "kept": len(kept),
    }
