"""Ranking metrics and a vectorised full-ranking evaluator for leave-one-out.

Every function takes plain Python sequences or numpy arrays so the evaluator
service, the CLI and the tests share one definition of each metric.  Ties are
counted *against* the model everywhere: a model that scores every item the same
must not look good.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def _top(ranked: Sequence[object], k: int) -> list[object]:
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    return list(ranked)[:k]


def hit_rate_at_k(ranked: Sequence[object], relevant: Iterable[object], k: int) -> float:
    """1.0 if any relevant item is in the top k (HR@K), else 0.0."""
    rel = set(relevant)
    return float(any(item in rel for item in _top(ranked, k)))


def recall_at_k(ranked: Sequence[object], relevant: Iterable[object], k: int) -> float:
    """Share of the relevant items found in the top k; 0.0 when nothing is relevant."""
    rel = set(relevant)
    if not rel:
        return 0.0
    return len(rel.intersection(_top(ranked, k))) / len(rel)


def ndcg_at_k(ranked: Sequence[object], relevant: Iterable[object], k: int) -> float:
    """Binary-relevance NDCG@K: DCG of the list over the DCG of a perfect list."""
    rel = set(relevant)
    if not rel:
        return 0.0
    dcg = sum(1.0 / np.log2(i + 2) for i, item in enumerate(_top(ranked, k)) if item in rel)
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(len(rel), k)))
    return float(dcg / ideal)


def mrr(ranked: Sequence[object], relevant: Iterable[object], k: int | None = None) -> float:
    """Reciprocal rank of the first relevant item (within the top k if given), 0.0 if none."""
    rel = set(relevant)
    items = list(ranked) if k is None else _top(ranked, k)
    for i, item in enumerate(items):
        if item in rel:
            return 1.0 / (i + 1)
    return 0.0


def auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """ROC AUC: probability that a random positive outscores a random negative (ties count half)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auc needs at least one positive and one negative label")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # Average ranks over tied groups (1-based), the Mann-Whitney U convention.
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def catalogue_coverage(recommendations: Iterable[Sequence[object]], catalogue_size: int) -> float:
    """Share of the catalogue that appears in at least one recommendation list."""
    if catalogue_size <= 0:
        raise ValueError("catalogue_size must be positive")
    seen: set[object] = set()
    for rec in recommendations:
        seen.update(rec)
    return len(seen) / catalogue_size


def target_ranks(scores: np.ndarray, targets: np.ndarray, exclude: Sequence[Iterable[int]] | None = None) -> np.ndarray:
    """0-based rank of each row's target item, ties counted against the model.

    rank = number of items (excluded ones aside) whose score is >= the target's,
    minus the target itself.  ``scores`` is [B, V]; ``targets`` [B] column
    indices; ``exclude`` per row, columns that do not compete (the user's other
    known items).  ``scores`` is modified in place for excluded columns.
    """
    scores = np.asarray(scores)
    # NaN means "no opinion": it beats nothing, and a NaN target loses to everything.
    np.nan_to_num(scores, copy=False, nan=-np.inf)
    targets = np.asarray(targets, dtype=np.int64)
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets].copy()
    if exclude is not None:
        for r, cols in enumerate(exclude):
            idx = np.fromiter(cols, dtype=np.int64)
            if idx.size:
                scores[r, idx] = -np.inf
    scores[rows, targets] = target_scores
    ranks = (scores >= target_scores[:, None]).sum(axis=1) - 1
    return ranks.astype(np.int64)


def _hit_rate_of_ranks(ranks: np.ndarray, k: int) -> float:
    return float((ranks < k).mean()) if ranks.size else 0.0


def _ndcg_of_ranks(ranks: np.ndarray, k: int) -> float:
    """One relevant item per case: its ideal DCG is 1, so NDCG is the discounted gain of its rank."""
    if not ranks.size:
        return 0.0
    return float(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0).mean())


@dataclass(frozen=True)
class RankingCurve:
    """HR@K and NDCG@K at several cut-offs, from one set of ranks: how quality grows with the list's length.

    ``hr[i]`` and ``ndcg[i]`` are the values at ``k[i]``.  The evaluator's report keeps one per model
    (``curves``) next to the @10 figures; the HTML report plots them.
    """

    k: list[int]
    hr: list[float]
    ndcg: list[float]


@dataclass
class FullRankingResult:
    """Aggregate of a full-ranking leave-one-out run."""

    ranks: np.ndarray
    k: int

    @property
    def hit_rate(self) -> float:
        return _hit_rate_of_ranks(self.ranks, self.k)

    @property
    def ndcg(self) -> float:
        return _ndcg_of_ranks(self.ranks, self.k)

    def curve(self, ks: Iterable[int]) -> RankingCurve:
        """HR and NDCG at each of ``ks`` (sorted, duplicates dropped): ranks are known, so any K is free."""
        cuts = sorted(set(ks))
        if not cuts or cuts[0] <= 0:
            raise ValueError(f"cut-offs must be positive, got {cuts}")
        return RankingCurve(
            k=cuts,
            hr=[_hit_rate_of_ranks(self.ranks, k) for k in cuts],
            ndcg=[_ndcg_of_ranks(self.ranks, k) for k in cuts],
        )

    @property
    def mrr(self) -> float:
        return float((1.0 / (self.ranks + 1.0)).mean()) if self.ranks.size else 0.0

    def as_dict(self) -> dict[str, float]:
        return {f"hr@{self.k}": self.hit_rate, f"ndcg@{self.k}": self.ndcg, "mrr": self.mrr}


def evaluate_full_ranking(
    score_fn: Callable[[np.ndarray], np.ndarray],
    users: np.ndarray,
    targets: np.ndarray,
    exclude: Sequence[Iterable[int]],
    k: int = 10,
    batch_size: int = 256,
    on_scores: Callable[[np.ndarray], None] | None = None,
) -> FullRankingResult:
    """HR@K / NDCG@K of ``score_fn`` over every item, one user batch at a time.

    ``score_fn(user_batch) -> [b, V]`` scores all items for those users (any
    user key the model understands: row numbers, ids).  Batching keeps memory
    at ``batch_size * V`` floats however large the catalogue is.  ``on_scores``
    sees each batch's scores before exclusions (another measure from the same
    scoring, such as coverage).
    """
    users = np.asarray(users)
    targets = np.asarray(targets, dtype=np.int64)
    ranks = np.empty(len(users), dtype=np.int64)
    for start in range(0, len(users), batch_size):
        sl = slice(start, start + batch_size)
        scores = np.array(score_fn(users[sl]), dtype=np.float64, copy=True)
        if on_scores is not None:
            on_scores(scores)
        ranks[sl] = target_ranks(scores, targets[sl], exclude[sl])
    return FullRankingResult(ranks=ranks, k=k)
