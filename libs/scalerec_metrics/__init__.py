"""Ranking metrics, unit-tested against hand-computed values."""

from scalerec_metrics.ranking import (
    FullRankingResult,
    RankingCurve,
    auc,
    catalogue_coverage,
    evaluate_full_ranking,
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    recall_at_k,
    target_ranks,
)

__all__ = [
    "FullRankingResult",
    "RankingCurve",
    "auc",
    "catalogue_coverage",
    "evaluate_full_ranking",
    "hit_rate_at_k",
    "mrr",
    "ndcg_at_k",
    "recall_at_k",
    "target_ranks",
]
