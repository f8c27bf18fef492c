"""One model version laid out for the request path: arrays in, arrays out.

:class:`ServingModel` joins a :class:`~scalerec_models.runtime.ModelVersion` (ONNX
files, ANN index, CF neighbours) with this process's :class:`ItemTable`, and
precomputes at activation what a request would otherwise rebuild per candidate:

- item-item neighbours as a dense ``[positions, N]`` matrix (position, score);
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
from scalerec_models.data import FIRST_ITEM
from scalerec_models.runtime import ModelVersion

from scalerec_ranker.items import ItemRow, ItemTable

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

    @property
    def version(self) -> int:
        return self.model.version

    @classmethod
    def build(cls, model: ModelVersion, rows: Sequence[ItemRow] | None = None) -> ServingModel:
        table = ItemTable.build(model.bundle.vocab, model.bundle.item_features, rows or ())
        width = max((len(v) for v in model.neighbors.values()), default=0)
        n = table.size
        nbr_pos = np.full((n, width), -1, dtype=np.int64)
        nbr_score = np.zeros((n, width), dtype=np.float32)
        for item_id, neighbours in model.neighbors.items():
            row = table.position.get(item_id)
            if row is None:
                continue
            j = 0
            for other, score in neighbours:
                p = table.position.get(other)
                if p is not None:
                    nbr_pos[row, j], nbr_score[row, j] = p, score
                    j += 1
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
        seeds = recent[recent < len(self.neighbour_pos)]
        if not len(seeds) or not self.neighbour_pos.shape[1]:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
        width = min(per_source, self.neighbour_pos.shape[1])
        pos = self.neighbour_pos[seeds, :width]
        score = self.neighbour_score[seeds, :width] / (1.0 + np.arange(len(seeds), dtype=np.float32))[:, None]
        seed = np.broadcast_to(seeds[:, None], pos.shape)
        valid = pos >= 0
        pos, score, seed = pos[valid], score[valid], seed[valid]
        order = np.argsort(-score, kind="stable")
        pos, score, seed = pos[order], score[order], seed[order]
        _, first = np.unique(pos, return_index=True)  # each item once, with its best seed
        first.sort()
        first = first[:per_source]
        return pos[first], score[first], seed[first]

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
        source = np.concatenate([np.full(len(p[1]), p[0], dtype=np.int8) for p in parts])
        because = np.concatenate([p[3] if p[3] is not None else np.full(len(p[1]), -1, np.int64) for p in parts])
        prior = np.concatenate(
            [p[2].astype(np.float32) if p[2] is not None else np.zeros(len(p[1]), np.float32) for p in parts]
        )
        keep = (positions >= FIRST_ITEM) & (positions < self.table.size)
        idx = np.flatnonzero(keep)
        keep_idx = idx[self.table.available[positions[idx]]]
        if len(blocked):
            keep_idx = keep_idx[~np.isin(positions[keep_idx], blocked)]
        _, first = np.unique(positions[keep_idx], return_index=True)
        first.sort()
        return Candidates(positions, source, because, prior).take(keep_idx[first][:limit])

    # ------------------------------------------------------------ re-ranking and explanations

    def rerank(self, cands: Candidates, scores: np.ndarray, k: int, per_category: int, explore: int) -> np.ndarray:
        """Indices into ``cands``: best first, at most ``per_category`` per category, ``explore`` slots
        kept for fresh items (appended after the rest), topped up from the best left when the cap was too
        strict for this candidate set."""
        n = len(cands)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        order = np.argsort(-scores[:n], kind="stable")
        is_fresh = cands.source[order] == FRESH
        fresh = order[is_fresh][:explore] if explore else np.zeros(0, np.int64)
        rest = order[~is_fresh] if explore else order
        cats = self.table.category[cands.positions[rest]]
        # Rank of each candidate within its category, in score order: a stable sort by category.
        by_cat = np.argsort(cats, kind="stable")
        sorted_cats = cats[by_cat]
        starts = np.flatnonzero(np.r_[True, sorted_cats[1:] != sorted_cats[:-1]])
        run = np.arange(len(cats)) - np.repeat(starts, np.diff(np.r_[starts, len(cats)]))
        rank = np.empty_like(run)
        rank[by_cat] = run
        picked = rest[rank < per_category][: k - len(fresh)]
        out = np.concatenate([picked, fresh])[:k]
        if len(out) < k:
            left = order[~np.isin(order, out)]
            out = np.concatenate([out, left[: k - len(out)]])
        return out

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
        sims = self.unit[mi[picked[known]]] @ self.unit[mi[hist]].T  # [k, H]
        sims[picked[known][:, None] == hist[None, :]] = -np.inf
        best = np.argmax(sims, axis=1)
        ok = sims[np.arange(len(best)), best] >= min_similarity
        choice = hist[best]
        if preferred is not None:
            pref = preferred[known]
            match = pref[:, None] == hist[None, :]
            has = match.any(axis=1)
            pref_sim = np.where(has, np.max(np.where(match, sims, -np.inf), axis=1), -np.inf)
            use = has & (pref_sim >= min_similarity)
            choice = np.where(use, pref, choice)
            ok |= use
        out[np.flatnonzero(known)[ok]] = choice[ok]
        return out
