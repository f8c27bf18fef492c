"""Online experiments: the state the evaluator announces (``experiments.state``) and the user → variant rule.

The evaluator owns an experiment (creates, changes, stops it, stores it); every ranker replica
reads the announcement and routes each user with :class:`Assignment`.  Assignment is a keyed
BLAKE2b hash of the user id with the experiment's salt, so it is the same in every replica and
after every restart, independent between experiments (different salts), and needs no state.

The results of an experiment (:class:`ExperimentResults`, per variant, with the differences to the
control) live here too: the evaluator answers them, ``scalerec demo`` writes them with the decision
(:class:`ExperimentOutcome`) and ``scalerec report`` draws them, all from this one definition.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from datetime import datetime
from enum import StrEnum
from statistics import NormalDist
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, computed_field, model_validator

from scalerec_events.models import Id

# Shares must sum to one within this (so 1/3 + 1/3 + 1/3 is fine, 0.5 + 0.4 is not).
SHARE_TOLERANCE = 1e-6
# The control variant's name unless an experiment says otherwise.
CONTROL = "champion"
MAX_VARIANTS = 8
VariantName = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
Salt = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class ExperimentStatus(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"  # stopped by an operator, nothing promoted
    CONCLUDED = "concluded"  # a decision promoted a challenger (or kept the champion) and ended it


class ExperimentVariant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: VariantName
    model_version: int = Field(ge=1, description="The ranker model version this variant serves.")
    share: float = Field(gt=0, le=1, description="Share of users routed to this variant; all shares sum to 1.")


class VariantSplit(BaseModel):
    """Variants with shares: what an operator writes (create or change), checked for consistency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    control: VariantName = Field(default=CONTROL, description="The variant every other one is compared with.")
    variants: list[ExperimentVariant] = Field(min_length=2, max_length=MAX_VARIANTS)

    @model_validator(mode="after")
    def _consistent(self) -> VariantSplit:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        if self.control not in names:
            raise ValueError(f"control variant {self.control!r} is not one of the variants {names}")
        versions = [v.model_version for v in self.variants]
        if len(set(versions)) != len(versions):
            raise ValueError(f"each variant must serve its own model version, got {versions}")
        total = sum(v.share for v in self.variants)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise ValueError(f"variant shares must sum to 1, they sum to {total:g}")
        return self

    def variant(self, name: str) -> ExperimentVariant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)


class Experiment(VariantSplit):
    """An experiment's whole state: stored by the evaluator and announced on ``experiments.state``.

    The topic is compacted and keyed by model name, so its newest message per model is the
    experiment that model's rankers follow (``status`` other than running: no experiment).
    """

    schema_version: Literal[1] = 1
    experiment_id: Id
    model: str
    name: str = Field(default="", max_length=200)
    salt: Salt
    status: ExperimentStatus = ExperimentStatus.RUNNING
    attribution_window_s: int = Field(default=3600, ge=1, le=30 * 86400)
    created_at: datetime
    updated_at: datetime
    decision: str | None = Field(default=None, description="Why the experiment ended the way it did.")
    winner: str | None = None

    @property
    def running(self) -> bool:
        return self.status is ExperimentStatus.RUNNING

    def versions(self) -> list[int]:
        return sorted(v.model_version for v in self.variants)


_SPACE = 1 << 64


def bucket(salt: str, user_id: str) -> int:
    """The user's point in [0, 2**64): keyed BLAKE2b (8 bytes) of the user id, the salt as key."""
    return int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8, key=salt.encode()).digest(), "big")


class Assignment:
    """User → variant for one experiment, precomputed so that a request pays one hash and one bisect."""

    __slots__ = ("_bounds", "_key", "experiment", "variants")

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.variants = list(experiment.variants)
        self._key = experiment.salt.encode()
        bounds, acc = [], 0.0
        for v in self.variants[:-1]:
            acc += v.share
            bounds.append(min(_SPACE, round(acc * _SPACE)))
        self._bounds = bounds  # the last variant takes everything above the last bound

    def variant_of(self, user_id: str) -> ExperimentVariant:
        point = int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8, key=self._key).digest(), "big")
        return self.variants[bisect_right(self._bounds, point)]


# --------------------------------------------------------------------------------------------- results
#
# What the evaluator answers for an experiment (``GET /v1/experiments/{id}``) and what ``scalerec demo``
# writes to ``experiment.json`` with the decision: one definition, read by the HTML report as it is.

# The confidence of every interval an experiment reports (the evaluator's statistics use the same).
CONFIDENCE = 0.95
_Rate = Annotated[float, Field(ge=0, le=1)]
_Count = Annotated[int, Field(ge=0)]
# A rate recomputed from its counts may differ from the stored one by float rounding only.
_RATE_TOLERANCE = 1e-9


class Interval(BaseModel):
    """Variant minus control, its 95% interval and two-sided p-value."""

    diff: float
    low: float
    high: float
    p_value: float = Field(ge=0, le=1)
    significant: bool


class RateInterval(BaseModel):
    """A variant's own rate with its 95% Wald interval (clipped to [0, 1])."""

    low: float
    high: float


def wald_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> RateInterval | None:
    """The Wald interval of ``successes / n``: the same normal approximation as the differences' intervals."""
    if n <= 0:
        return None
    p = successes / n
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * math.sqrt(p * (1 - p) / n)
    return RateInterval(low=max(0.0, p - half), high=min(1.0, p + half))


class VariantResult(BaseModel):
    name: str
    model_version: int
    share: float = Field(gt=0, le=1)
    users: _Count
    impressions: _Count = Field(description="Recommendation answers shown (one impression = one answer).")
    items_shown: _Count
    clicks: _Count
    conversions: _Count
    clicked_impressions: _Count
    converted_impressions: _Count
    ctr: _Rate = Field(description="clicked_impressions / impressions.")
    conversion_rate: _Rate = Field(description="converted_impressions / impressions.")
    ndcg_at_10: _Rate = Field(description="Mean NDCG@10 of each answer, its clicked items as the relevant ones.")
    fallback_share: _Rate
    ctr_vs_control: Interval | None = None
    conversion_rate_vs_control: Interval | None = None
    ndcg_at_10_vs_control: Interval | None = None

    @model_validator(mode="after")
    def _consistent(self) -> VariantResult:
        for part, rate in (("clicked_impressions", self.ctr), ("converted_impressions", self.conversion_rate)):
            count = getattr(self, part)
            if count > self.impressions:
                raise ValueError(f"variant {self.name!r}: {part} {count} > impressions {self.impressions}")
            if self.impressions and abs(count / self.impressions - rate) > _RATE_TOLERANCE:
                raise ValueError(
                    f"variant {self.name!r}: rate {rate} is not {part} / impressions = {count}/{self.impressions}"
                )
        return self

    @computed_field(description="The CTR's own 95% Wald interval (null without impressions).")  # type: ignore[prop-decorator]
    @property
    def ctr_interval(self) -> RateInterval | None:
        return wald_interval(self.clicked_impressions, self.impressions)

    @computed_field(description="The conversion rate's own 95% Wald interval (null without impressions).")  # type: ignore[prop-decorator]
    @property
    def conversion_rate_interval(self) -> RateInterval | None:
        return wald_interval(self.converted_impressions, self.impressions)


class SampleRatioCheck(BaseModel):
    users: dict[str, int]
    expected_shares: dict[str, float]
    chi2: float = Field(ge=0)
    p_value: float = Field(ge=0, le=1)
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
    variants: list[VariantResult] = Field(min_length=2, max_length=MAX_VARIANTS)
    srm: SampleRatioCheck
    unattributed_feedback: int = Field(description="Feedback rows whose impression is gone (TTL) or out of window.")

    @model_validator(mode="after")
    def _has_control(self) -> ExperimentResults:
        names = [v.name for v in self.variants]
        if self.control not in names:
            raise ValueError(f"control variant {self.control!r} is not one of the variants {names}")
        return self

    def variant(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)


class ExperimentOut(BaseModel):
    """An experiment and its results (``GET /v1/experiments/{id}``)."""

    experiment: Experiment
    results: ExperimentResults | None = Field(
        description="Computed now while it runs; as of its end once stopped or concluded."
    )


class ExperimentDecision(BaseModel):
    """What deciding an experiment did: promoted a winner, or kept the champion, and why."""

    promoted: bool
    winner: str | None
    model_version: int | None
    reason: str


class ExperimentOutcome(BaseModel):
    """A decided experiment with its results (``experiment.json`` in the demo's data folder)."""

    experiment: Experiment
    results: ExperimentResults
    decision: ExperimentDecision
