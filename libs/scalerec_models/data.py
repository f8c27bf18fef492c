"""Interaction logs, the item index and the leave-one-out split (numpy only).

The trainer, the evaluator and ``scalerec eval-dataset`` all see data through
:class:`Interactions` — parallel numpy arrays, one row per event — so a model
never cares whether its events came from Kafka, HBase or a MovieLens file
(read by :mod:`scalerec_models.datasets`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scalerec_events.labels import CONVERSION_RATING, CONVERSION_TYPES
from scalerec_events.models import EventType
from scalerec_features import ITEM_FEATURE_LEN, context_features, stable_hash

PAD = 0
UNKNOWN = 1
FIRST_ITEM = 2
# The conversion head's label is scalerec_events.labels.is_conversion, applied to whole columns.
_CONVERSION_TYPE_NAMES = sorted(t.value for t in CONVERSION_TYPES)


@dataclass
class Interactions:
    """One row per event; every array has the same length.

    ``context`` is ``context_features`` of the event ([hour, weekday, device, locale]).
    """

    user_id: np.ndarray  # str
    item_id: np.ndarray  # str
    ts_ms: np.ndarray  # int64
    type: np.ndarray  # str: view/click/add_to_cart/purchase/rating
    value: np.ndarray  # float32, NaN when absent
    context: np.ndarray  # int [n, 4] (int64; int32 when built by the streaming InteractionsBuilder)

    def __post_init__(self) -> None:
        n = len(self.user_id)
        for name in ("item_id", "ts_ms", "type", "value", "context"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Interactions.{name} has {len(getattr(self, name))} rows, user_id has {n}")

    def __len__(self) -> int:
        return len(self.user_id)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, object]]) -> Interactions:
        """From dicts with user_id, item_id, ts_ms and optional type, value, context (list of 4 ints)."""
        rows = list(records)
        ctx = [r.get("context") or context_features(int(r["ts_ms"])) for r in rows]  # type: ignore[call-overload]
        return cls(
            user_id=np.array([str(r["user_id"]) for r in rows], dtype=object),
            item_id=np.array([str(r["item_id"]) for r in rows], dtype=object),
            ts_ms=np.array([int(r["ts_ms"]) for r in rows], dtype=np.int64),  # type: ignore[call-overload]
            type=np.array([str(r.get("type", "click")) for r in rows], dtype=object),
            value=np.array([np.nan if r.get("value") is None else float(r["value"]) for r in rows], dtype=np.float32),  # type: ignore[arg-type]
            context=np.array(ctx, dtype=np.int64).reshape(len(rows), 4),
        )

    def take(self, idx: np.ndarray) -> Interactions:
        return Interactions(
            self.user_id[idx], self.item_id[idx], self.ts_ms[idx], self.type[idx], self.value[idx], self.context[idx]
        )

    def conversion(self) -> np.ndarray:
        """Bool per row: the conversion head's label (:func:`scalerec_events.labels.is_conversion` per row)."""
        types = self.type.astype(str)
        is_type = np.isin(types, _CONVERSION_TYPE_NAMES)
        rated = (types == EventType.RATING.value) & (np.nan_to_num(self.value, nan=0.0) >= CONVERSION_RATING)
        return is_type | rated


class ItemVocab:
    """Item id -> model index: 0 = padding, 1 = unknown (cold start), known items from 2.

    In hashed mode (``buckets`` set) index = 2 + stable_hash(item_id) % buckets, so
    a catalogue of tens of millions of items needs no dictionary at all and a new
    item gets its own (shared) row without retraining the vocabulary.
    """

    def __init__(self, items: Sequence[str] = (), buckets: int | None = None) -> None:
        self.buckets = buckets
        self.items: list[str] = [] if buckets else list(dict.fromkeys(str(i) for i in items))
        self._index = {item: i + FIRST_ITEM for i, item in enumerate(self.items)}

    @property
    def size(self) -> int:
        """Rows an embedding table needs (including pad and unknown)."""
        return FIRST_ITEM + (self.buckets if self.buckets else len(self.items))

    def __len__(self) -> int:
        return self.size

    def index(self, item_id: str) -> int:
        if self.buckets:
            return FIRST_ITEM + stable_hash(str(item_id), self.buckets + 1) - 1
        return self._index.get(str(item_id), UNKNOWN)

    def indices(self, item_ids: Iterable[str]) -> np.ndarray:
        return np.fromiter((self.index(i) for i in item_ids), dtype=np.int64)

    def item_id(self, index: int) -> str | None:
        """The id behind a row (None for pad/unknown, and in hashed mode where rows are shared)."""
        if self.buckets or index < FIRST_ITEM or index - FIRST_ITEM >= len(self.items):
            return None
        return self.items[index - FIRST_ITEM]

    def to_json(self) -> dict[str, object]:
        return {"pad": PAD, "unknown": UNKNOWN, "first_item": FIRST_ITEM, "buckets": self.buckets, "items": self.items}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ItemVocab:
        return cls(items=list(data.get("items") or []), buckets=data.get("buckets"))  # type: ignore[call-overload, arg-type]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | Path) -> ItemVocab:
        return cls.from_json(json.loads(Path(path).read_text()))


def feature_table(vocab: ItemVocab, item_features: Mapping[str, Sequence[int]] | None) -> np.ndarray:
    """[vocab.size, ITEM_FEATURE_LEN] content features by item index (zeros where unknown)."""
    table = np.zeros((vocab.size if not vocab.buckets else FIRST_ITEM, ITEM_FEATURE_LEN), dtype=np.int64)
    if item_features and not vocab.buckets:
        for item, feats in item_features.items():
            idx = vocab.index(item)
            if idx >= FIRST_ITEM:
                table[idx] = np.asarray(feats, dtype=np.int64)[:ITEM_FEATURE_LEN]
    return table


# ---------------------------------------------------------------- per-user sequences and the split


@dataclass
class Sequences:
    """Each user's events as index arrays, oldest first (ties in input order)."""

    users: list[str]
    items: list[np.ndarray]  # item indices
    contexts: list[np.ndarray]  # [len, 4]
    conversions: list[np.ndarray]  # bool


def _user_time_order(data: Interactions) -> np.ndarray:
    """Row order grouped by user, oldest first; a stable sort so equal timestamps keep file order."""
    return np.lexsort((np.arange(len(data)), data.ts_ms, data.user_id.astype(str)))


def to_sequences(data: Interactions, vocab: ItemVocab) -> Sequences:
    """Group by user, sort by time with a stable sort so equal timestamps keep file order."""
    order = _user_time_order(data)
    users_sorted = data.user_id.astype(str)[order]
    idx = vocab.indices(data.item_id[order])
    ctx = data.context[order]
    conv = data.conversion()[order]
    bounds = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1], True])
    seq = Sequences([], [], [], [])
    for a, b in itertools.pairwise(bounds):
        seq.users.append(str(users_sorted[a]))
        seq.items.append(idx[a:b])
        seq.contexts.append(ctx[a:b])
        seq.conversions.append(conv[a:b])
    return seq


@dataclass
class LeaveOneOut:
    """Last event per user = test, second-to-last = validation, the rest = train.

    Only users with at least 3 events are evaluated; shorter ones still train.
    """

    vocab: ItemVocab
    item_features: np.ndarray  # [V, ITEM_FEATURE_LEN] by index
    train: Sequences  # per user, the events before validation
    val_target: np.ndarray  # [U] item index (users with >= 3 events only)
    val_context: np.ndarray
    test_target: np.ndarray
    test_context: np.ndarray
    eval_users: np.ndarray  # rows of ``train`` that have val/test targets
    popularity: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # [V] ms of each item's first training event (int64 max when it has none): "fresh" items are the newest.
    first_seen: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def n_items(self) -> int:
        return self.vocab.size

    def history(self, row: int, stage: str) -> np.ndarray:
        """The input sequence for a stage: train events (val) or train + the validation item (test)."""
        h = self.train.items[row]
        if stage == "test":
            j = int(np.searchsorted(self.eval_users, row))
            h = np.r_[h, self.val_target[j]]
        return h

    def histories(self, stage: str) -> list[np.ndarray]:
        return [self.history(int(r), stage) for r in self.eval_users]

    def exclusions(self, stage: str) -> list[np.ndarray]:
        """Items each evaluated user already has; the target competes only with the rest."""
        targets = self.val_target if stage == "val" else self.test_target
        out = []
        for h, t in zip(self.histories(stage), targets, strict=True):
            ex = np.unique(h)
            out.append(ex[(ex != t) & (ex >= FIRST_ITEM)])
        return out

    def targets(self, stage: str) -> np.ndarray:
        return self.val_target if stage == "val" else self.test_target

    def contexts(self, stage: str) -> np.ndarray:
        return self.val_context if stage == "val" else self.test_context


def leave_one_out(
    data: Interactions, item_features: Mapping[str, Sequence[int]] | None = None, vocab: ItemVocab | None = None
) -> LeaveOneOut:
    """Split every user's time-ordered events; by default the vocabulary covers every item in the data.

    Items seen only in validation/test still get an index (the full catalogue is
    ranked), they are simply never trained on — as for a new item in production.
    """
    vocab = vocab or ItemVocab(sorted(set(data.item_id.astype(str)), key=_natural_key))
    seqs = to_sequences(data, vocab)
    train = Sequences([], [], [], [])
    val_t, val_c, test_t, test_c, eval_rows = [], [], [], [], []
    for u, it, cx, cv in zip(seqs.users, seqs.items, seqs.contexts, seqs.conversions, strict=True):
        row = len(train.users)
        if len(it) >= 3:
            eval_rows.append(row)
            val_t.append(it[-2])
            val_c.append(cx[-2])
            test_t.append(it[-1])
            test_c.append(cx[-1])
            it, cx, cv = it[:-2], cx[:-2], cv[:-2]
        train.users.append(u)
        train.items.append(it)
        train.contexts.append(cx)
        train.conversions.append(cv)
    pop = np.bincount(np.concatenate(train.items) if train.items else np.zeros(0, np.int64), minlength=vocab.size)
    # First training event per item: every user's events in time order, less the two held out.
    order = _user_time_order(data)
    users = data.user_id.astype(str)[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    rank_from_end = np.repeat(starts + sizes, sizes) - np.arange(len(order))  # 1 = the user's last event
    held_out = (np.repeat(sizes, sizes) >= 3) & (rank_from_end <= 2)
    first_seen = np.full(vocab.size, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, vocab.indices(data.item_id[order][~held_out]), data.ts_ms[order][~held_out])
    return LeaveOneOut(
        vocab=vocab,
        item_features=feature_table(vocab, item_features),
        train=train,
        val_target=np.asarray(val_t, dtype=np.int64),
        val_context=np.asarray(val_c, dtype=np.int64).reshape(-1, 4),
        test_target=np.asarray(test_t, dtype=np.int64),
        test_context=np.asarray(test_c, dtype=np.int64).reshape(-1, 4),
        eval_users=np.asarray(eval_rows, dtype=np.int64),
        popularity=pop.astype(np.float64),
        first_seen=first_seen,
    )


def _natural_key(s: str) -> tuple[int, int | str]:
    return (0, int(s)) if s.isdigit() else (1, s)


# ---------------------------------------------------------------- streaming construction


class InteractionsBuilder:
    """Builds :class:`Interactions` one event at a time, in compact chunks, for data that streams in.

    The trainer reads tens of millions of examples from the store; holding each as
    a dict (or a pydantic object) costs kilobytes per row.  Here a row costs ~37
    bytes while building (int32 codes for user, item and type, int64 time, float32
    value, int32 context) and every distinct id string is kept once, so the final
    ``Interactions`` hold pointers to shared strings rather than a string per row.
    Rows are kept in arrival order, so the result equals
    ``Interactions.from_records`` of the same rows.
    """

    def __init__(self, chunk_rows: int = 8192) -> None:
        self.chunk_rows = chunk_rows
        self._codes: dict[str, dict[str, int]] = {"user": {}, "item": {}, "type": {}}
        self._buf: dict[str, list[float | int]] = {k: [] for k in ("user", "item", "type", "ts", "value", "ctx")}
        self._chunks: dict[str, list[np.ndarray]] = {k: [] for k in self._buf}
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    def _code(self, kind: str, key: str) -> int:
        table = self._codes[kind]
        code = table.get(key)
        if code is None:
            code = table[key] = len(table)
        return code

    def add(
        self,
        user_id: str,
        item_id: str,
        ts_ms: int,
        type: str = "click",
        value: float | None = None,
        context: Sequence[int] | None = None,
    ) -> None:
        b = self._buf
        b["user"].append(self._code("user", str(user_id)))
        b["item"].append(self._code("item", str(item_id)))
        b["type"].append(self._code("type", str(type)))
        b["ts"].append(int(ts_ms))
        b["value"].append(np.nan if value is None else float(value))
        b["ctx"].extend(list(context) if context else context_features(int(ts_ms)))
        self._rows += 1
        if len(b["user"]) >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        dtypes = {"user": np.int32, "item": np.int32, "type": np.int16, "ts": np.int64, "value": np.float32}
        dtypes["ctx"] = np.int32
        for key, values in self._buf.items():
            if values:
                self._chunks[key].append(np.asarray(values, dtype=dtypes[key]))
            values.clear()

    def build(self) -> Interactions:
        """The rows added so far (the builder keeps them; drop it after building to free its chunks)."""
        self._flush()

        def cat(key: str, dtype: type) -> np.ndarray:
            parts = self._chunks[key]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

        def pool(kind: str) -> np.ndarray:
            out = np.empty(len(self._codes[kind]), dtype=object)
            out[:] = list(self._codes[kind])
            return out

        return Interactions(
            user_id=pool("user")[cat("user", np.int32)],
            item_id=pool("item")[cat("item", np.int32)],
            ts_ms=cat("ts", np.int64),
            type=pool("type")[cat("type", np.int16)],
            value=cat("value", np.float32),
            context=cat("ctx", np.int32).reshape(-1, 4),
        )
