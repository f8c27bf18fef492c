"""Metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scalerec_metrics import (
    FullRankingResult,
    auc,
    catalogue_coverage,
    evaluate_full_ranking,
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    recall_at_k,
    target_ranks,
)


def test_hit_rate_recall_mrr() -> None:
    ranked = ["a", "b", "c", "d"]
    assert hit_rate_at_k(ranked, {"c"}, 3) == 1.0
    assert hit_rate_at_k(ranked, {"d"}, 3) == 0.0
    assert recall_at_k(ranked, {"b", "d", "z"}, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, set(), 2) == 0.0
    assert mrr(ranked, {"c", "d"}) == pytest.approx(1 / 3)
    assert mrr(ranked, {"d"}, k=2) == 0.0


def test_ndcg_by_hand() -> None:
    # Relevant at positions 2 and 4 (1-based): DCG = 1/log2(3) + 1/log2(5); ideal = 1 + 1/log2(3).
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at_k(["x", "a", "y", "b"], {"a", "b"}, 4) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(["a"], {"a"}, 10) == 1.0
    # Single relevant item at rank 3 -> 1/log2(4) = 0.5.
    assert ndcg_at_k(["x", "y", "a"], {"a"}, 10) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ndcg_at_k(["a"], {"a"}, 0)


def test_auc_with_ties() -> None:
    # Pairs (pos, neg): (0.9>0.1), (0.9>0.5), (0.5=0.5 -> 0.5), (0.5>0.1) => 3.5 / 4.
    assert auc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)
    assert auc([0.1, 0.9], [1, 0]) == 0.0
    with pytest.raises(ValueError):
        auc([0.1, 0.2], [1, 1])


def test_catalogue_coverage() -> None:
    assert catalogue_coverage([["a", "b"], ["b", "c"]], 6) == pytest.approx(0.5)


def test_target_rank_counts_ties_against_the_model() -> None:
    scores = np.array([[0.5, 0.5, 0.5, 0.1], [0.0, 0.9, 0.3, 0.3]])
    # Row 0: target 1 ties with items 0 and 2 -> rank 2.  Row 1: target 3 ties item 2, below item 1 -> rank 2.
    assert target_ranks(scores.copy(), np.array([1, 3])).tolist() == [2, 2]
    # Excluding item 1 (a known item) from row 1 lifts the target to rank 1.
    assert target_ranks(scores.copy(), np.array([1, 3]), [[], [1]]).tolist() == [2, 1]


def test_constant_scores_rank_last() -> None:
    ranks = target_ranks(np.zeros((1, 100)), np.array([7]))
    assert ranks.tolist() == [99]


def test_nan_scores_never_win() -> None:
    scores = np.array([[np.nan, 1.0, 2.0], [np.nan, 1.0, 2.0]])
    assert target_ranks(scores, np.array([2, 0])).tolist() == [0, 2]


def test_full_ranking_evaluator_by_hand() -> None:
    table = np.array(
        [
            [0.9, 0.8, 0.1, 0.0],  # target 1: item 0 above it -> rank 1
            [0.1, 0.2, 0.3, 0.4],  # target 0, item 3 excluded: items 1, 2 above -> rank 2
            [0.0, 0.0, 0.0, 0.0],  # target 2: three ties -> rank 3
        ]
    )
    res = evaluate_full_ranking(lambda u: table[u], np.arange(3), np.array([1, 0, 2]), [[], [3], []], k=2, batch_size=2)
    assert res.ranks.tolist() == [1, 2, 3]
    assert res.hit_rate == pytest.approx(1 / 3)
    assert res.ndcg == pytest.approx((1 / math.log2(3)) / 3)
    assert res.as_dict()["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)


def test_ranking_curve_by_hand_and_consistent_with_the_single_cut_off() -> None:
    res = FullRankingResult(ranks=np.array([0, 1, 3, 12]), k=10)
    curve = res.curve([10, 1, 5, 5, 20])
    assert curve.k == [1, 5, 10, 20]
    assert curve.hr == pytest.approx([1 / 4, 3 / 4, 3 / 4, 1.0])
    gains = [1.0, 1 / math.log2(3), 1 / math.log2(5), 1 / math.log2(14)]
    assert curve.ndcg[0] == pytest.approx(gains[0] / 4)
    assert curve.ndcg[1] == pytest.approx(sum(gains[:3]) / 4)
    assert curve.ndcg[3] == pytest.approx(sum(gains) / 4)
    # The value at K=10 is exactly the one the @10 metrics report.
    assert (curve.hr[2], curve.ndcg[2]) == (res.hit_rate, res.ndcg)
    assert all(a <= b for a, b in zip(curve.ndcg, curve.ndcg[1:], strict=False))
    with pytest.raises(ValueError, match="positive"):
        res.curve([0, 5])
