"""The experiment statistics against reference implementations (statsmodels, scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scalerec_metrics.experiments import (
    Moments,
    mean_difference,
    ndcg_of_clicks,
    proportion_difference,
    sample_ratio_mismatch,
)
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW


@pytest.mark.parametrize(("c1", "n1", "c2", "n2"), [(120, 2000, 150, 2000), (31, 400, 22, 390), (5, 60, 0, 55)])
def test_the_rate_interval_and_p_value_match_statsmodels(c1: int, n1: int, c2: int, n2: int) -> None:
    d = proportion_difference(c1, n1, c2, n2)
    assert d is not None
    low, high = confint_proportions_2indep(c2, n2, c1, n1, method="wald", compare="diff", alpha=0.05)
    assert d.low == pytest.approx(low, abs=1e-12) and d.high == pytest.approx(high, abs=1e-12)
    _, p = proportions_ztest([c2, c1], [n2, n1])  # pooled variance, two-sided
    assert d.p_value == pytest.approx(p, rel=1e-9)
    assert d.diff == pytest.approx(c2 / n2 - c1 / n1)


def test_the_mean_interval_matches_statsmodels_unequal_variances() -> None:
    rng = np.random.default_rng(7)
    control, treatment = rng.beta(1, 6, 3000), rng.beta(1.2, 6, 2500)
    mc, mt = Moments(), Moments()
    for x in control:
        mc = mc.add(float(x))
    for x in treatment:
        mt = mt.add(float(x))
    d = mean_difference(mc, mt)
    assert d is not None
    ref = CompareMeans(DescrStatsW(treatment), DescrStatsW(control))
    low, high = ref.zconfint_diff(alpha=0.05, usevar="unequal")
    _, p = ref.ztest_ind(usevar="unequal")
    assert d.low == pytest.approx(low, rel=1e-9) and d.high == pytest.approx(high, rel=1e-9)
    assert d.p_value == pytest.approx(p, rel=1e-6)


def test_the_sample_ratio_check_is_scipys_chi_square() -> None:
    observed, shares = [5120, 4880], [0.5, 0.5]
    ref = stats.chisquare(observed, [5000, 5000])
    srm = sample_ratio_mismatch(observed, shares)
    assert srm.chi2 == pytest.approx(ref.statistic) and srm.p_value == pytest.approx(ref.pvalue)
    assert not srm.mismatch
    assert sample_ratio_mismatch([5400, 4600], shares).mismatch  # p ~ 1e-15: a broken split
    assert not sample_ratio_mismatch([0, 0], shares).mismatch


def test_ndcg_of_clicks() -> None:
    assert ndcg_of_clicks([]) == 0.0
    assert ndcg_of_clicks([0]) == 1.0 and ndcg_of_clicks([0, 1]) == 1.0
    assert ndcg_of_clicks([1]) == pytest.approx(1 / math.log2(3))
    assert ndcg_of_clicks([12]) == 0.0  # clicked, but beyond the top 10
