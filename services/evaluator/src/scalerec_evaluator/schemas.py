"""What the evaluator stores and answers, as pydantic models (each response has its schema in OpenAPI)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from scalerec_events.experiments import Experiment, ExperimentDecision, ExperimentVariant, VariantSplit
from scalerec_metrics import RankingCurve

# --------------------------------------------------------------------------- offline reports


class EvaluationReport(BaseModel):
    """One model version judged offline against the champion and the baselines on the same holdout."""

    model_config = ConfigDict(extra="ignore")

    users: int
    items: int
    k: int
    models: dict[str, dict[str, float]] = Field(
        description="Metrics per model (``model_v<N>``, baselines): of its full ranking of the catalogue (``hr@10``, "
        "``ndcg@10``, ``mrr``, ``coverage@10``) and of the answers it would serve (``served_hr@10``, "
        "``served_ndcg@10``, ``served_coverage@10``; for a version also ``candidate_recall`` and ``candidates``)."
    )
    curves: dict[str, RankingCurve] = Field(
        default_factory=dict, description="HR@K and NDCG@K at several cut-offs per model, from the same ranks."
    )
    model: str = ""
    version: int = 0
    champion_before: int | None = None
    metric: str = ""
    promoted: bool = False
    decision: str = ""
    held: str | None = Field(
        default=None,
        description="Why a version that passed the gate was not promoted: an experiment was running (it is judged "
        "again when the experiment ends), or the champion changed while it was judged. Null otherwise.",
    )
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
# The results models (ExperimentOut, ExperimentResults, VariantResult, ...) are scalerec_events.experiments':
# `scalerec demo` and `scalerec report` read the same definitions.


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


class DecisionOut(ExperimentDecision):
    """The decision and the experiment as it now stands (concluded, or still running)."""

    experiment: Experiment
