"""The evaluator's one settings class (env vars, upper-case)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from scalerec_core.settings import ModelRepositorySettings, ServedListSettings


class EvaluatorSettings(ModelRepositorySettings, ServedListSettings):
    service_name: str = "evaluator"
    host: str = "127.0.0.1"
    port: int = Field(default=8085, ge=1, le=65535)
    consumer_group: str = "evaluator"
    holdout_fraction: float = Field(default=0.1, gt=0, lt=0.5, description="Newest share of time held out.")
    max_eval_users: int = Field(default=2000, ge=10)
    promotion_metric: Literal[
        "ndcg@10", "hr@10", "mrr", "coverage@10", "served_ndcg@10", "served_hr@10", "served_coverage@10"
    ] = Field(
        default="ndcg@10",
        description="What the gate compares: the model's full ranking of the catalogue (ndcg@10, hr@10, mrr, "
        "coverage@10) or the answers it would serve (served_*: its candidates as the ranker builds them, ranked, "
        "re-ranked with CATEGORY_CAP; a baseline's from its own top MAX_CANDIDATES). Every report has both.",
    )
    max_recall_drop: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="A version whose candidate_recall (the share of holdout targets among the candidates the "
        "ranker would score) is below the champion's by more than this share is not promoted, whatever "
        "PROMOTION_METRIC says: its user tower or item-item neighbours got worse (a drop within twice its standard "
        "error on the holdout is chance and passes). A hashed-vocabulary version has no retrieval candidates: "
        "replacing a listed-vocabulary champion with one needs 1, which turns the check off.",
    )
    min_improvement: float = Field(
        default=0.0, ge=0, description="Relative gain over the champion (and baselines) needed to promote."
    )
    promotion: Literal["offline", "online"] = Field(
        default="offline",
        description="offline: a candidate that passes the gate becomes champion. online: it passes only as a "
        "challenger, and a champion changes by an experiment's decision (POST /v1/experiments/{id}/decide); "
        "the first model is still promoted offline, as there is nothing to compare it with online.",
    )
    triton_url: str = Field(
        default="",
        description="triton://host:8001 of the Triton the rankers score on. The evaluator is its one model "
        "controller: it loads the champion and the running experiment's versions and unloads the rest "
        "(rankers only follow), on every address the name resolves to (give a headless Service's name "
        "when Triton has several replicas) or on each of triton://ip:8001,ip:8001. Empty: no Triton "
        "(rankers score in process).",
    )
    triton_repair_s: float = Field(
        default=30.0,
        ge=0,
        description="How often every Triton replica is checked for the versions it must serve, and given "
        "those it lacks (a replica restarted or added by the autoscaler starts empty). 0: only at start "
        "and on changes.",
    )
    unload_grace_s: float = Field(
        default=30.0, ge=0, description="How long a version stays served after it stops being needed."
    )
    min_experiment_impressions: int = Field(
        default=1000, ge=1, description="Answers each variant needs before an experiment can be decided."
    )


@lru_cache
def get_settings() -> EvaluatorSettings:
    return EvaluatorSettings()
