"""``scalerec demo``'s report as typed models: the demo builds and writes them, ``scalerec report`` reads them.

One definition for both sides, so the JSON the demo writes (``report.json`` in its data folder, and
``--json``) is exactly what the HTML report reads, and a field renamed on one side fails the type check
on the other. Parts that come from a service's answer (the evaluator's report, the ranker's answers) are
lenient: a newer service may add fields, the report keeps what it knows.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from scalerec_events.experiments import ExperimentOutcome
from scalerec_metrics import RankingCurve


class _Lenient(BaseModel):
    # Producers may add fields (a newer demo, the evaluator, the ranker): the report reads what it knows.
    model_config = ConfigDict(extra="ignore")


class DemoConfig(_Lenient):
    """What the demo was asked for: the shop's size and seed, the model size, the backends."""

    users: int
    items: int
    events_per_user: float
    seed: int
    model_size: str
    backends: str = Field(description="The *_URL settings given, or 'embedded'.")


class BatchCounts(_Lenient):
    """What the collector answered, summed over a stream of batches."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0


class Ingested(_Lenient):
    items: BatchCounts
    events: BatchCounts


class Evaluation(_Lenient):
    """The evaluator's report of the demo's model version (``GET /v1/reports/{version}``)."""

    users: int
    items: int
    k: int = 10
    models: dict[str, dict[str, float]]
    curves: dict[str, RankingCurve] = Field(default_factory=dict)
    model: str = ""
    version: int
    champion_before: int | None = None
    metric: str = "ndcg@10"
    promoted: bool
    decision: str
    holdout_start_ms: int | None = None
    evaluated_at: str | None = None
    card_metrics: dict[str, float] = Field(default_factory=dict)

    def ndcg_of(self, name: str) -> float:
        """NDCG@10 of a model of this report (``model_v<N>`` or a baseline such as ``popularity``)."""
        return self.models[name]["ndcg@10"]


class SampleItem(_Lenient):
    item_id: str
    title: str = ""
    category: str = ""
    source: str = ""
    reason: str = ""
    score: float | None = None


class Sample(_Lenient):
    """One answer of the ranker (``GET /v1/recommendations``) as the demo asked for it."""

    request_id: str | None = None
    user_id: str
    model_version: int | None = None
    variant: str | None = None
    experiment_id: str | None = None
    fallback: bool = False
    fallback_reason: str | None = None
    scorer: str = ""
    history_source: str | None = None
    took_ms: float | None = None
    candidates_scored: int | None = None
    items: list[SampleItem]


class TrainSummary(_Lenient):
    seconds: float
    metrics: dict[str, float] = Field(default_factory=dict)


class ExperimentSkipped(_Lenient):
    """The demo asked for an experiment but had no champion to test the new version against."""

    skipped: str


class DemoResult(_Lenient):
    ingested: Ingested | None = None
    preprocessor: dict[str, int] = Field(default_factory=dict)
    version: int
    train: TrainSummary
    evaluation: Evaluation
    # Also written on its own as experiment.json (ExperimentOutcome), which is what the HTML report reads.
    experiment: ExperimentOutcome | ExperimentSkipped | None = None
    samples: list[Sample] = Field(default_factory=list)


class DemoReport(_Lenient):
    """``scalerec demo``'s report (``report.json`` in its data folder, and ``--json``)."""

    config: DemoConfig | None = None
    data: dict[str, int | float] = Field(description="The shop's counts and structure statistics (shop_summary).")
    stages_seconds: dict[str, float]
    total_seconds: float
    result: DemoResult

    def model_beats_popularity(self) -> bool:
        """The demo's verdict: the trained version ranks the holdout better than most-popular."""
        ev = self.result.evaluation
        return ev.ndcg_of(f"model_v{self.result.version}") > ev.ndcg_of("popularity")
