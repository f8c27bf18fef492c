"""Statistics of an online experiment: intervals for the difference to the control, and the SRM check.

Methods (each checked against statsmodels/scipy in tests/unit/libs/test_experiment_stats.py):

* Rates (CTR, conversion rate: the share of impressions with at least one click / conversion) —
  two-proportion z-test: the 95% interval of the difference is Wald's (unpooled standard error),
  the p-value is the pooled-variance z-test's.
* Means (NDCG@10 of clicks per impression) — the large-sample z interval for a difference of
  means with unequal variances (Welch), from per-variant count, sum and sum of squares, so the
  evaluator never holds per-impression values in memory.
* Sample-ratio mismatch — Pearson's chi-square test of the users seen per variant against the
  configured shares; a p-value under ``SRM_ALPHA`` says the split itself is broken (a variant that
  crashes, caches, or drops users), and no result of that experiment should be trusted.

Needs scipy (the ``baselines`` extra, which the evaluator installs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scalerec_events.experiments import CONFIDENCE
from scipy import stats

SRM_ALPHA = 0.001


@dataclass(frozen=True)
class Difference:
    """Treatment minus control, with its interval and two-sided p-value."""

    diff: float
    low: float
    high: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def _z(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2))


def _two_sided_p(z: float) -> float:
    return float(2 * stats.norm.sf(abs(z)))


def proportion_difference(
    control_successes: int, control_n: int, successes: int, n: int, confidence: float = CONFIDENCE
) -> Difference | None:
    """Two-proportion z-test of ``successes/n`` against the control's; None without data on both sides."""
    if control_n <= 0 or n <= 0:
        return None
    p_c, p_t = control_successes / control_n, successes / n
    diff = p_t - p_c
    se = math.sqrt(p_c * (1 - p_c) / control_n + p_t * (1 - p_t) / n)
    half = _z(confidence) * se
    pooled = (control_successes + successes) / (control_n + n)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / control_n + 1 / n))
    p_value = _two_sided_p(diff / se0) if se0 > 0 else 1.0
    return Difference(diff, diff - half, diff + half, p_value)


@dataclass(frozen=True)
class Moments:
    """Count, sum and sum of squares of a per-impression value: enough for a mean and its variance."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, value: float) -> Moments:
        return Moments(self.n + 1, self.total + value, self.squares + value * value)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator)."""
        if self.n < 2:
            return 0.0
        return max(0.0, (self.squares - self.total * self.total / self.n) / (self.n - 1))


def mean_difference(control: Moments, treatment: Moments, confidence: float = CONFIDENCE) -> Difference | None:
    """Difference of means with a z interval on unequal variances; None with fewer than 2 values a side."""
    if control.n < 2 or treatment.n < 2:
        return None
    diff = treatment.mean - control.mean
    se = math.sqrt(control.variance / control.n + treatment.variance / treatment.n)
    half = _z(confidence) * se
    p_value = _two_sided_p(diff / se) if se > 0 else (1.0 if diff == 0 else 0.0)
    return Difference(diff, diff - half, diff + half, p_value)


@dataclass(frozen=True)
class SampleRatio:
    chi2: float
    p_value: float
    mismatch: bool


def sample_ratio_mismatch(observed: Sequence[int], shares: Sequence[float], alpha: float = SRM_ALPHA) -> SampleRatio:
    """Chi-square goodness of fit of ``observed`` counts to ``shares`` (no mismatch claimed without data)."""
    total = sum(observed)
    if total == 0:
        return SampleRatio(0.0, 1.0, False)
    expected = [total * s / sum(shares) for s in shares]
    chi2, p = stats.chisquare(list(observed), expected)
    return SampleRatio(float(chi2), float(p), bool(p < alpha))


def ndcg_of_clicks(clicked_positions: Sequence[int], k: int = 10) -> float:
    """NDCG@k of one answer with its clicked items as the relevant ones (positions 0-based, distinct).

    An answer without clicks scores 0; one whose clicks are all on top scores 1.
    """
    hits = sorted({p for p in clicked_positions if p >= 0})
    if not hits:
        return 0.0
    dcg = sum(1.0 / math.log2(p + 2) for p in hits if p < k)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(hits), k)))
    return dcg / ideal
