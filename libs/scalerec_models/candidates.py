"""How an answer is built from a model version, as array functions: one definition for the ranker's request
path (``scalerec_ranker.serving.ServingModel``) and for the evaluator's measure of the lists it serves.

Positions are int64 indices into whatever item table the caller keeps (the ranker's ``ItemTable``, the
evaluator's catalogue); ``first`` is a first-occurrences function over such positions (the ranker passes
one with a reusable scratch array).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from scalerec_models.runtime import CF_SEEDS

JUST_SEEN = 5  # the last few items of a history are not news: never candidates
NO_CATEGORY = 0  # items without one are capped together
FirstFn = Callable[[np.ndarray], np.ndarray]


def first_occurrences(positions: np.ndarray, slot: np.ndarray | None = None) -> np.ndarray:
    """Indices of each position's first occurrence, in order: O(n) with a scratch array of at least
    ``positions.max() + 1`` entries (``np.unique`` sorts twice). Positions must be >= 0."""
    if slot is None:
        slot = np.empty(int(positions.max()) + 1 if len(positions) else 0, dtype=np.int64)
    at = np.arange(len(positions))
    slot[positions] = len(positions)
    np.minimum.at(slot, positions, at)  # ufunc.at: defined for repeated indices (plain assignment is not)
    return np.flatnonzero(slot[positions] == at)


def recent_seeds(history: np.ndarray, first: FirstFn, lowest: int = 0) -> np.ndarray:
    """The ``CF_SEEDS`` most recent distinct items of a history (oldest first), most recent first;
    positions below ``lowest`` (padding, unknown items) are not seeds."""
    rev = history[::-1]
    recent = rev[first(rev)]
    return recent[recent >= lowest][:CF_SEEDS]


def neighbour_matrix(
    neighbours: Mapping[str, Sequence[tuple[str, float]]], position: Mapping[str, int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A version's item-item neighbours as dense ``[size, N]`` arrays: (positions, -1 for none; scores,
    best first). Items or neighbours without a position are left out."""
    width = max((len(v) for v in neighbours.values()), default=0)
    pos = np.full((size, width), -1, dtype=np.int64)
    score = np.zeros((size, width), dtype=np.float32)
    for item_id, row_of in neighbours.items():
        row = position.get(item_id)
        if row is None:
            continue
        j = 0
        for other, s in row_of:
            p = position.get(other)
            if p is not None:
                pos[row, j], score[row, j] = p, s
                j += 1
    return pos, score


def item_cf(
    neighbour_pos: np.ndarray, neighbour_score: np.ndarray, recent: np.ndarray, per_source: int, first: FirstFn
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbours of the most recent items (most recent first), each scored by its best seed discounted by
    the seed's recency rank. -> (positions, score, seed position), best first, at most ``per_source``."""
    seeds = recent[recent < len(neighbour_pos)]
    if not len(seeds) or not neighbour_pos.shape[1]:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    width = min(per_source, neighbour_pos.shape[1])
    pos = neighbour_pos[seeds, :width].ravel()
    score = (neighbour_score[seeds, :width] / (1.0 + np.arange(len(seeds), dtype=np.float32))[:, None]).ravel()
    valid = np.flatnonzero(pos >= 0)
    order = valid[np.argsort(-score[valid], kind="stable")]
    pos = pos[order]
    keep = first(pos)[:per_source]  # each item once, with its best seed
    picked = order[keep]
    return pos[keep], score[picked], seeds[picked // width]


def merged(positions: np.ndarray, offer: np.ndarray, limit: int, first: FirstFn) -> np.ndarray:
    """Indices into ``positions`` (the sources concatenated in priority order) of the candidates: those
    ``offer`` allows, each item's first occurrence, cut at ``limit``."""
    idx = np.flatnonzero(offer)
    return idx[first(positions[idx])][:limit]


def category_code(category: str, codes: dict[str, int]) -> int:
    """The re-ranking code of a category name, numbered in ``codes`` as first seen (1, 2, ...)."""
    if not category or category == "unknown":
        return NO_CATEGORY
    code = codes.get(category)
    if code is None:
        code = codes[category] = len(codes) + 1
    return code


def per_category(k: int, category_cap: float) -> int:
    """Most items of one category in an answer of ``k``: ``CATEGORY_CAP`` as a share, rounded up, at least 2."""
    return max(2, math.ceil(k * category_cap - 1e-9))  # 10 * 0.3 is 3.0000000000000004


def rerank(
    order: np.ndarray, category: np.ndarray, k: int, cap: int, fresh: np.ndarray | None = None, explore: int = 0
) -> list[int]:
    """The answer's ``k`` indices from ``order`` (candidate indices, best first): at most ``cap`` per category
    (``category``: one code per candidate), ``explore`` slots kept for the best ``fresh`` candidates
    (appended after the rest), topped up from the best left when the cap was too strict for this set.

    A walk down the order that stops at ``k`` picks (a few dozen steps in practice): cheaper than the
    handful of whole-array passes a vectorised category cap needs for ``k`` = 10."""
    explored: list[int] = []
    is_fresh: list[bool] = []
    if explore and fresh is not None:
        explored = order[fresh[order]][:explore].tolist()
        is_fresh = fresh.tolist()
    ranked = order.tolist()
    need = k - len(explored)
    picked: list[int] = []
    if need > 0:
        codes = category.tolist()
        per: dict[int, int] = {}
        for i in ranked:
            if is_fresh and is_fresh[i]:
                continue
            c = codes[i]
            seen = per.get(c, 0)
            per[c] = seen + 1
            if seen < cap:
                picked.append(i)
                if len(picked) == need:
                    break
    out = (picked + explored)[:k]
    if len(out) < k:
        chosen = set(out)
        for i in ranked:
            if i not in chosen:
                out.append(i)
                if len(out) == k:
                    break
    return out
