"""The promotion gate: better than the champion and every baseline, on enough users."""

from __future__ import annotations

from scalerec_evaluator.gate import decide
from scalerec_evaluator.schemas import EvaluationReport


def _report(users: int = 100, **ndcg: float) -> EvaluationReport:
    return EvaluationReport(users=users, items=50, k=10, models={name: {"ndcg@10": v} for name, v in ndcg.items()})


def test_promotes_a_model_that_beats_everything() -> None:
    d = decide(_report(model_v2=0.3, model_v1=0.2, popularity=0.1, item_cf=0.25), 2, 1, "ndcg@10", 0.0)
    assert d.promote and "beats" in d.reason


def test_keeps_the_champion_when_the_candidate_is_worse() -> None:
    d = decide(_report(model_v2=0.19, model_v1=0.2, popularity=0.1, item_cf=0.15), 2, 1, "ndcg@10", 0.0)
    assert not d.promote and "champion" in d.reason


def test_a_model_must_beat_the_baselines_even_without_a_champion() -> None:
    d = decide(_report(model_v1=0.1, popularity=0.12, item_cf=0.05), 1, None, "ndcg@10", 0.0)
    assert not d.promote and "popularity" in d.reason


def test_min_improvement_is_relative() -> None:
    d = decide(_report(model_v2=0.205, model_v1=0.2, popularity=0.1, item_cf=0.1), 2, 1, "ndcg@10", 0.05)
    assert not d.promote


def test_too_small_a_holdout_promotes_nothing() -> None:
    report = _report(users=3, model_v1=0.9, popularity=0.1, item_cf=0.1)
    assert not decide(report, 1, None, "ndcg@10", 0.0).promote


def test_a_version_whose_candidates_hold_fewer_targets_than_the_champions_is_refused() -> None:
    report = _report(users=1000, model_v2=0.3, model_v1=0.2, popularity=0.1, item_cf=0.1)
    report.models["model_v2"]["candidate_recall"] = 0.80
    report.models["model_v1"]["candidate_recall"] = 0.90
    d = decide(report, 2, 1, "ndcg@10", 0.0, max_recall_drop=0.05)
    assert not d.promote and "candidate_recall 0.8000" in d.reason and "model_v1" in d.reason
    assert decide(report, 2, 1, "ndcg@10", 0.0, max_recall_drop=0.2).promote  # 0.80 >= 0.90 x 0.8
    assert decide(report, 2, 1, "ndcg@10", 0.0, max_recall_drop=1.0).promote  # the check off
    # On 20 users two targets are chance: 0.10 apart is within twice the difference's standard error (0.21).
    assert decide(report.model_copy(update={"users": 20}), 2, 1, "ndcg@10", 0.0, max_recall_drop=0.05).promote
    again = decide(report, 1, 1, "ndcg@10", 0.0, max_recall_drop=0.05)  # the champion judged again: no recall check
    assert not again.promote and "does not beat" in again.reason
    report.models["model_v1"].pop("candidate_recall")  # no figure to compare with: the metric decides
    assert decide(report, 2, 1, "ndcg@10", 0.0, max_recall_drop=0.05).promote


def test_a_metric_missing_from_a_row_promotes_nothing() -> None:
    """A champion whose served lists could not be measured keeps its full-ranking row; gating on a served
    metric then has nothing to compare with, and says so instead of promoting past it."""
    report = _report(model_v2=0.3, model_v1=0.2, popularity=0.1, item_cf=0.1)
    for name in ("model_v2", "popularity", "item_cf"):
        report.models[name]["served_ndcg@10"] = report.models[name]["ndcg@10"]
    d = decide(report, 2, 1, "served_ndcg@10", 0.0)
    assert not d.promote and "model_v1" in d.reason and "could not be measured" in d.reason
    assert decide(report, 2, 1, "ndcg@10", 0.0).promote
