"""One model version laid out for the request path: arrays in, arrays out.

:class:`ServingModel` joins a :class:`~scalerec_models.runtime.ModelVersion` (ONNX
files, ANN index, CF neighbours) with this process's :class:`ItemTable`, and
precomputes at activation what a request would otherwise rebuild per candidate:

- item-item neighbours as a dense ``[positions, N]`` matrix (position, score);
- with a candidate encoder, every item's candidate vector (:meth:`ItemTable.attach_encoder`);
- unit item embeddings for explanations, indexed by model index;
- the baseline lists (trending, fresh) as position arrays, re-derived only when
  the lists or the table change.

The functions below work on int64 position arrays with numpy masks; the only
per-request Python loops are over the ``k`` items answered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scalerec_models import candidates
from scalerec_models.data import FIRST_ITEM
from scalerec_models.runtime import ModelVersion

from scalerec_ranker.items import Encoder, ItemRow, ItemTable

SOURCES = ("retrieval", "item_cf", "trending", "fresh")
RETRIEVAL, ITEM_CF, TRENDING, FRESH = range(len(SOURCES))


@dataclass
class Candidates:
    """Parallel arrays, one entry per candidate, in source priority order."""

    positions: np.ndarray  # int64
    source: np.ndarray  # int8 index into SOURCES
    because: np.ndarray  # int64 position of the history item behind it, -1 if none
    prior: np.ndarray  # float32 baseline order when the scorer is down

    def __len__(self) -> int:
        return len(self.positions)

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int64), np.zeros(0, np.float32))

    def take(self, idx: np.ndarray) -> Candidates:
        return Candidates(self.positions[idx], self.source[idx], self.because[idx], self.prior[idx])


@dataclass
class _BaselinePositions:
    key: tuple[int, int]
    trending: np.ndarray
    trending_prior: np.ndarray
    fresh: np.ndarray


@dataclass
class ServingModel:
    model: ModelVersion
    table: ItemTable
    neighbour_pos: np.ndarray  # [P, N] int64 positions, -1 = none
    neighbour_score: np.ndarray  # [P, N] float32, best first
    unit: np.ndarray | None  # [V, D] float32 L2-normalised item embeddings, by model index
    _baselines: _BaselinePositions | None = field(default=None, repr=False)
    _slot: np.ndarray | None = field(default=None, repr=False)  # scratch for first occurrences
    _mark: np.ndarray | None = field(default=None, repr=False)  # scratch for blocked positions

    @property
    def version(self) -> int:
        return self.model.version

    @classmethod
    def build(
        cls,
        model: ModelVersion,
        rows: Sequence[ItemRow] | None = None,
        encoder: Encoder | None = None,
        vector_max_bytes: int = 0,
    ) -> ServingModel:
        table = ItemTable.build(model.bundle.vocab, model.bundle.item_features, rows or ())
        if encoder is not None:
            table.attach_encoder(encoder, vector_max_bytes)
        nbr_pos, nbr_score = candidates.neighbour_matrix(model.neighbors, table.position, table.size)
        return cls(model, table, nbr_pos, nbr_score, model.unit_embeddings)

    # ------------------------------------------------------------ inputs

    def baseline_positions(
        self, generation: int, trending: Sequence[tuple[str, float]], fresh: Sequence[str]
    ) -> _BaselinePositions:
        """The trending and fresh lists as positions, recomputed only when they or the table changed."""
        key = (generation, self.table.size)
        cached = self._baselines
        if cached is None or cached.key != key:
            pos = self.table.position
            t_pos = [(pos[i], s) for i, s in trending if i in pos]
            cached = _BaselinePositions(
                key,
                np.fromiter((p for p, _ in t_pos), dtype=np.int64, count=len(t_pos)),
                np.fromiter((math.log1p(max(s, 0.0)) / 100 for _, s in t_pos), dtype=np.float32, count=len(t_pos)),
                self.table.positions(fresh),
            )
            self._baselines = cached
        return cached

    def retrieval_positions(self, model_indices: np.ndarray) -> np.ndarray:
        """ANN results (model indices) as positions: the same numbers for a listed vocabulary."""
        if self.table.vocab.buckets:
            return np.zeros(0, dtype=np.int64)  # hashed rows are shared by many items: no id behind a row
        return np.where(model_indices >= FIRST_ITEM, model_indices, -1)

    # ------------------------------------------------------------ candidates

    def item_cf(self, recent: np.ndarray, per_source: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Neighbours of the most recent items (most recent first), each scored by its best seed.

        -> (positions, score, seed position), best first, at most ``per_source``.
        """
        return candidates.item_cf(self.neighbour_pos, self.neighbour_score, recent, per_source, self.first_occurrences)

    def merge(
        self,
        parts: Sequence[tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None]],
        blocked: np.ndarray,
        limit: int,
    ) -> Candidates:
        """Concatenate sources in priority order, keep each item's first occurrence, drop ``blocked``
        positions and what the catalogue does not offer, and cut at ``limit``."""
        parts = [p for p in parts if len(p[1])]
        if not parts:
            return Candidates.empty()
        positions = np.concatenate([p[1] for p in parts])
        # Positions are -1 (none) or inside the table; -1 indexes the last slot, masked by the first test.
        offer = (positions >= FIRST_ITEM) & self.table.available[positions]
        if len(blocked):
            mark = self._scratch_mark()
            blocked = blocked[(blocked >= 0) & (blocked < len(mark))]
            mark[blocked] = True
            offer &= ~mark[positions]
            mark[blocked] = False
        keep = candidates.merged(positions, offer, limit, self.first_occurrences)
        source = np.repeat(np.array([p[0] for p in parts], dtype=np.int8), [len(p[1]) for p in parts])
        because = np.concatenate([p[3] if p[3] is not None else np.full(len(p[1]), -1, np.int64) for p in parts])
        prior = np.concatenate(
            [p[2].astype(np.float32) if p[2] is not None else np.zeros(len(p[1]), np.float32) for p in parts]
        )
        return Candidates(positions, source, because, prior).take(keep)

    # ------------------------------------------------------------ scratch (event loop only)

    def _slots(self) -> np.ndarray:
        n = len(self.table.model_index)  # the table's capacity: every position fits
        if self._slot is None or len(self._slot) < n:
            self._slot = np.empty(n, dtype=np.int64)
            self._mark = np.zeros(n, dtype=bool)
        return self._slot

    def _scratch_mark(self) -> np.ndarray:
        self._slots()
        assert self._mark is not None
        return self._mark

    def first_occurrences(self, positions: np.ndarray) -> np.ndarray:
        """Indices of each position's first occurrence, in order, on this table's scratch array."""
        return candidates.first_occurrences(positions, self._slots())

    # ------------------------------------------------------------ re-ranking and explanations

    def rerank(self, cands: Candidates, scores: np.ndarray, k: int, per_category: int, explore: int) -> np.ndarray:
        """Indices into ``cands``: best first, at most ``per_category`` per category, ``explore`` slots
        kept for fresh items (:func:`scalerec_models.candidates.rerank`)."""
        n = len(cands)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        order = np.argsort(-scores[:n], kind="stable")
        fresh = cands.source == FRESH if explore else None
        category = self.table.category[cands.positions]
        return np.asarray(candidates.rerank(order, category, k, per_category, fresh, explore), dtype=np.int64)

    def explain(
        self, picked: np.ndarray, history: np.ndarray, min_similarity: float, preferred: np.ndarray | None = None
    ) -> np.ndarray:
        """The history item behind each picked item, from one matrix product ``[k, H]``.

        ``preferred`` (a candidate's seed, -1 for none) wins when it is similar enough; otherwise the
        most similar history item; -1 when even that is below ``min_similarity``: an unrelated
        "because you viewed" is worse than none."""
        out = np.full(len(picked), -1, dtype=np.int64)
        if self.unit is None or not len(picked) or not len(history):
            return out
        mi = self.table.model_index
        hist = history[(history < self.table.size)]
        hist = hist[mi[hist] >= FIRST_ITEM]
        if not len(hist):
            return out
        known = mi[picked] >= FIRST_ITEM
        if not known.any():
            return out
        rows = np.flatnonzero(known)
        sims = self.unit[mi[picked[rows]]] @ self.unit[mi[hist]].T  # [k, H]
        sims[picked[rows][:, None] == hist[None, :]] = -np.inf  # an item does not explain itself
        best = sims.argmax(axis=1)
        best_sim = sims[np.arange(len(rows)), best].tolist()
        hist_ids = hist.tolist()
        column = {p: j for j, p in reversed(list(enumerate(hist_ids)))}  # first column of each item
        seeds = preferred[rows].tolist() if preferred is not None else None
        # k rows (10): a loop over them is cheaper than the masks a vectorised choice needs.
        for r, (row, j_best) in enumerate(zip(rows.tolist(), best.tolist(), strict=True)):
            seed = seeds[r] if seeds is not None else -1
            j = column.get(seed)  # never -1: history positions are items
            if j is not None and sims[r, j] >= min_similarity:
                out[row] = seed
            elif best_sim[r] >= min_similarity:
                out[row] = hist_ids[j_best]
        return out
