"""What the evaluator stores and answers, as pydantic models (each response has its schema in OpenAPI)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from scalerec_events.experiments import Experiment, ExperimentVariant, VariantSplit
from scalerec_metrics import RankingCurve

# --------------------------------------------------------------------------- offline reports


class EvaluationReport(BaseModel):
    """One model version judged offline against the champion and the baselines on the same holdout."""

    model_config = ConfigDict(extra="ignore")

    users: int
    items: int
    k: int
    models: dict[str, dict[str, float]] = Field(description="Metrics per model (``model_v<N>``, baselines).")
    curves: dict[str, RankingCurve] = Field(
        default_factory=dict, description="HR@K and NDCG@K at several cut-offs per model, from the same ranks."
    )
    model: str = ""
    version: int = 0
    champion_before: int | None = None
    metric: str = ""
    promoted: bool = False
    decision: str = ""
    holdout_start_ms: int = 0
    evaluated_at: str = ""
    card_metrics: dict[str, float] = Field(default_factory=dict)


class ReportsOut(BaseModel):
    champion: int | None
    reports: list[EvaluationReport]


class OnlineVersion(BaseModel):
    """Online results of one served model version (or the baseline) from the stored exposure rows."""

    requests: int
    impressions: int = Field(description="Items shown.")
    clicks: int
    conversions: int
    ctr: float = Field(description="Share of answers with at least one click within the attribution window.")
    conversion_rate: float = Field(description="Share of answers with at least one conversion.")


class OnlineOut(BaseModel):
    variants: dict[str, OnlineVersion]


# --------------------------------------------------------------------------- experiments


class ExperimentCreate(VariantSplit):
    """A new experiment: the control (serving the champion) and one or more challengers, with shares."""

    name: str = Field(default="", max_length=200)
    attribution_window_s: int = Field(default=3600, ge=1, le=30 * 86400)
    salt: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Assignment salt (a fresh random one by default); reuse one to keep an earlier split.",
    )


class ExperimentChange(BaseModel):
    """New shares (or variants) for a running experiment; the salt stays, so most users keep their variant."""

    model_config = ConfigDict(extra="forbid")

    variants: list[ExperimentVariant] = Field(min_length=2, max_length=8)


class Interval(BaseModel):
    """Variant minus control, its 95% interval and two-sided p-value."""

    diff: float
    low: float
    high: float
    p_value: float
    significant: bool


class VariantResult(BaseModel):
    name: str
    model_version: int
    share: float
    users: int
    impressions: int = Field(description="Recommendation answers shown (one impression = one answer).")
    items_shown: int
    clicks: int
    conversions: int
    clicked_impressions: int
    converted_impressions: int
    ctr: float = Field(description="clicked_impressions / impressions.")
    conversion_rate: float = Field(description="converted_impressions / impressions.")
    ndcg_at_10: float = Field(description="Mean NDCG@10 of each answer, its clicked items as the relevant ones.")
    fallback_share: float
    ctr_vs_control: Interval | None = None
    conversion_rate_vs_control: Interval | None = None
    ndcg_at_10_vs_control: Interval | None = None


class SampleRatioCheck(BaseModel):
    users: dict[str, int]
    expected_shares: dict[str, float]
    chi2: float
    p_value: float
    mismatch: bool = Field(description="p < 0.001: the split is broken and no result should be trusted.")


class ExperimentResults(BaseModel):
    experiment_id: str
    computed_at: datetime
    control: str
    attribution_window_s: int
    method: str = Field(
        default=(
            "rates: two-proportion z-test (95% Wald interval of the difference, pooled z p-value); "
            "NDCG@10: z interval of a difference of means, unequal variances; SRM: chi-square on users"
        )
    )
    variants: list[VariantResult]
    srm: SampleRatioCheck
    unattributed_feedback: int = Field(description="Feedback rows whose impression is gone (TTL) or out of window.")


class ExperimentOut(BaseModel):
    experiment: Experiment
    results: ExperimentResults | None = Field(
        description="Computed now while it runs; as of its end once stopped or concluded."
    )


class DecisionOut(BaseModel):
    promoted: bool
    winner: str | None
    model_version: int | None
    reason: str
    experiment: Experiment
