"""Item-side serving state, computed once per item instead of once per candidate per request.

:class:`Catalogue` is this process's copy of the catalogue: one :class:`ItemRow`
per item (content features already hashed, availability, display fields), loaded
from the store at start and kept current from the items topic.

:class:`ItemTable` is that catalogue laid out for one model version: numpy arrays
indexed by *position*, where positions ``0..V-1`` are the model's own item indices
(so ``item_embeddings`` rows line up) and items the model has never seen are
appended after them (their model index is "unknown", their features are their
own).  The request path gathers rows of these arrays; it never parses, tokenises
or hashes.  When the version carries a candidate encoder and the ranker scores in
process, the table also holds every item's candidate vector (what the ranker's item
encoder makes of its index and content), computed for all items when the table is
built and for each changed item when it changes: a request gathers vectors instead
of encoding 300 candidates' ids and content again.

Concurrency: tables are changed only on the event loop (catalogue updates, the
swap to a new version), and the request path reads them on the event loop between
awaits, so a request never sees half an update.  Appends that outgrow an array
replace it with a larger copy; a row already handed to the scorer is a copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scalerec_adapters.store import WideColumnStore
from scalerec_events.models import Item
from scalerec_features import ITEM_FEATURE_LEN, item_feature_vector
from scalerec_models import candidates
from scalerec_models.data import FIRST_ITEM, UNKNOWN, ItemVocab
from scalerec_storage import records as r

log = logging.getLogger(__name__)


#: model indices [n] and content features [n, ITEM_FEATURE_LEN] -> candidate vectors [n, D] (float32).
Encoder = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class ItemRow:
    """What serving needs of one catalogue item."""

    item_id: str
    features: tuple[int, ...]
    available: bool
    title: str
    category: str

    @classmethod
    def of(cls, item: Item, features: Sequence[int] | None = None) -> ItemRow:
        if features is None:
            features = item_feature_vector(item.category, item.price, item.title, item.text)
        return cls(item.item_id, tuple(int(f) for f in features), item.available, item.title, item.category)


class Catalogue:
    """Every known item's :class:`ItemRow`, plus a log of which items changed since a point in time.

    The log lets a table built in a worker thread catch up with the updates that
    arrived while it was being built.
    """

    def __init__(self) -> None:
        self.rows: dict[str, ItemRow] = {}
        self._log: list[str] = []
        self._log_base = 0  # sequence number of _log[0]

    @property
    def sequence(self) -> int:
        return self._log_base + len(self._log)

    def load(self, store: WideColumnStore) -> int:
        """Read the whole catalogue from the store (features as stored, not recomputed)."""
        n = 0
        for item, features in r.scan_catalogue(store):
            self.rows[item.item_id] = ItemRow.of(item, features)
            n += 1
        return n

    def apply(self, rows: Iterable[ItemRow]) -> list[ItemRow]:
        changed = []
        for row in rows:
            if self.rows.get(row.item_id) != row:
                self.rows[row.item_id] = row
                self._log.append(row.item_id)
                changed.append(row)
        return changed

    def changed_since(self, sequence: int) -> list[ItemRow]:
        start = max(0, sequence - self._log_base)
        return [self.rows[i] for i in dict.fromkeys(self._log[start:])]

    def trim_log(self, keep_from: int | None = None) -> None:
        """Forget log entries before ``keep_from`` (all of them when None): no build needs them any more."""
        upto = self.sequence if keep_from is None else keep_from
        drop = max(0, upto - self._log_base)
        if drop:
            del self._log[:drop]
            self._log_base += drop


class ItemTable:
    """Per-position arrays for one model version (see the module docstring)."""

    def __init__(self, vocab: ItemVocab, model_features: np.ndarray | None = None, capacity: int = 0) -> None:
        known = [] if vocab.buckets else vocab.items
        n = FIRST_ITEM + len(known)
        cap = max(capacity, n, 16)
        self.vocab = vocab
        self.ids: list[str] = ["", "", *known]
        self.position: dict[str, int] = {item: FIRST_ITEM + i for i, item in enumerate(known)}
        self.model_index = np.zeros(cap, dtype=np.int64)
        self.model_index[:n] = np.arange(n)
        self.features = np.zeros((cap, ITEM_FEATURE_LEN), dtype=np.int64)
        if model_features is not None and len(model_features):
            m = min(n, len(model_features))
            self.features[:m] = model_features[:m]
        self.available = np.zeros(cap, dtype=bool)  # only what the catalogue says is available
        self.category = np.zeros(cap, dtype=np.int32)
        self.titles: list[str] = [""] * n
        self.categories: list[str] = [""] * n
        self._category_codes: dict[str, int] = {}
        self.size = n
        self.vectors: np.ndarray | None = None  # [capacity, D] float32 candidate vectors (attach_encoder)
        self._encoder: Encoder | None = None
        self._vector_bytes = 0

    @classmethod
    def build(
        cls, vocab: ItemVocab, model_features: np.ndarray | None, rows: Iterable[ItemRow], capacity: int = 0
    ) -> ItemTable:
        table = cls(vocab, model_features, capacity)
        table.apply(rows)
        return table

    def __len__(self) -> int:
        return self.size

    # ------------------------------------------------------------ updates (event loop only)

    def _grow(self, need: int) -> None:
        self._grow_vectors(need)
        cap = len(self.model_index)
        if need <= cap:
            return
        new = max(need, cap * 2)
        for name in ("model_index", "available", "category"):
            old = getattr(self, name)
            arr = np.zeros(new, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)
        feats = np.zeros((new, ITEM_FEATURE_LEN), dtype=np.int64)
        feats[:cap] = self.features
        self.features = feats

    def _grow_vectors(self, need: int) -> None:
        """Room for ``need`` candidate vectors within their byte budget, or none kept at all."""
        vectors = self.vectors
        if vectors is None or need <= len(vectors):
            return
        limit = self._vector_bytes // (vectors.shape[1] * 4)  # rows the budget holds
        if need > limit:
            log.warning(
                "candidate vectors of %d items would be over %d bytes: scored with the whole graph from now on",
                need,
                self._vector_bytes,
            )
            self.drop_vectors()
            return
        grown = np.zeros((min(max(need, len(vectors) * 2), limit), vectors.shape[1]), dtype=np.float32)
        grown[: len(vectors)] = vectors
        self.vectors = grown

    def _category_code(self, category: str) -> int:
        return candidates.category_code(category, self._category_codes)

    def attach_encoder(self, encoder: Encoder, max_bytes: int, chunk: int = 65536) -> bool:
        """Compute every item's candidate vector now, and each changed item's from then on.

        False, and nothing attached, when the vectors would take more than ``max_bytes`` or the encoder
        fails: the version is then scored with its whole graph (ids and content per request).
        """
        try:
            dim = int(encoder(self.model_index[:1], self.features[:1]).shape[-1])
            limit = max_bytes // (dim * 4)  # rows the budget holds
            if self.size > limit:
                log.info("candidate vectors of %d items would be over %d bytes: not kept", self.size, max_bytes)
                return False
            vectors = np.zeros((min(len(self.model_index), limit), dim), dtype=np.float32)
            for start in range(0, self.size, chunk):
                stop = min(self.size, start + chunk)
                vectors[start:stop] = encoder(self.model_index[start:stop], self.features[start:stop])
        except Exception as exc:
            log.error("candidate vectors not computed (scored with the whole graph): %s", exc)
            return False
        self.vectors, self._encoder, self._vector_bytes = vectors, encoder, max_bytes
        return True

    def drop_vectors(self) -> None:
        self.vectors, self._encoder = None, None

    def _encode(self, positions: np.ndarray, chunk: int = 65536) -> None:
        encoder, vectors = self._encoder, self.vectors
        if encoder is None or vectors is None or not len(positions):
            return
        try:
            for start in range(0, len(positions), chunk):
                part = positions[start : start + chunk]
                vectors[part] = encoder(self.model_index[part], self.features[part])
        except Exception as exc:  # a stale vector would score an item by its old content: none at all
            log.error("candidate vectors dropped (scored with the whole graph from now on): %s", exc)
            self.drop_vectors()

    def apply(self, rows: Iterable[ItemRow]) -> None:
        """Add or update items: a changed title, price or availability is seen by the next request."""
        changed: list[int] = []
        for row in rows:
            pos = self.position.get(row.item_id)
            if pos is None:
                pos = self.size
                self._grow(pos + 1)
                self.position[row.item_id] = pos
                self.ids.append(row.item_id)
                self.titles.append("")
                self.categories.append("")
                index = self.vocab.index(row.item_id)  # a hashed vocabulary knows every item's bucket
                self.model_index[pos] = index if index >= FIRST_ITEM else UNKNOWN
                self.size = pos + 1
            self.features[pos] = row.features[:ITEM_FEATURE_LEN]
            self.available[pos] = row.available
            self.category[pos] = self._category_code(row.category)
            self.titles[pos] = row.title
            self.categories[pos] = row.category
            changed.append(pos)
        self._encode(np.asarray(changed, dtype=np.int64))

    # ------------------------------------------------------------ lookups

    def positions(self, item_ids: Iterable[str]) -> np.ndarray:
        """Positions of known items, in order; unknown ids are left out."""
        get = self.position.get
        return np.fromiter((p for p in map(get, item_ids) if p is not None), dtype=np.int64)

    def positions_or_unknown(self, item_ids: Iterable[str]) -> np.ndarray:
        """Positions with ``UNKNOWN`` (1) for ids this table does not know (for model inputs)."""
        get = self.position.get
        return np.fromiter((get(i, UNKNOWN) for i in item_ids), dtype=np.int64)

    def id_of(self, positions: Iterable[int]) -> Iterator[str]:
        ids = self.ids
        return (ids[int(p)] for p in positions)
