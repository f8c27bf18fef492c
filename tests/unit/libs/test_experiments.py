"""Experiment definitions and user assignment: deterministic, independent per salt, true to the shares."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from scalerec_events.experiments import Assignment, Experiment, ExperimentVariant, VariantSplit
from scalerec_metrics.experiments import sample_ratio_mismatch

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _experiment(salt: str = "s1", shares: tuple[float, ...] = (0.5, 0.3, 0.2)) -> Experiment:
    names = ["champion", "challenger", "third"][: len(shares)]
    return Experiment(
        experiment_id="exp-1",
        model="scalerec_ranker",
        salt=salt,
        variants=[
            ExperimentVariant(name=n, model_version=i + 1, share=s)
            for i, (n, s) in enumerate(zip(names, shares, strict=True))
        ],
        created_at=NOW,
        updated_at=NOW,
    )


USERS = [f"user-{n}" for n in range(100_000)]


def test_assignment_matches_the_shares_over_100k_users() -> None:
    exp = _experiment()
    counts = Counter(Assignment(exp).variant_of(u).name for u in USERS)
    for v in exp.variants:
        assert abs(counts[v.name] / len(USERS) - v.share) < 0.01, counts
    # And no sample-ratio mismatch by the evaluator's own check (chi-square, p >= 0.001).
    assert not sample_ratio_mismatch([counts[v.name] for v in exp.variants], [v.share for v in exp.variants]).mismatch


def test_assignment_is_deterministic_across_instances_and_independent_across_salts() -> None:
    a, b = Assignment(_experiment()), Assignment(_experiment())  # another replica, or after a restart
    sample = USERS[:5000]
    assert [a.variant_of(u).name for u in sample] == [b.variant_of(u).name for u in sample]
    other = Assignment(_experiment(salt="s2"))
    same = sum(a.variant_of(u).name == other.variant_of(u).name for u in sample)
    # Independent salts agree about as often as chance does: 0.5² + 0.3² + 0.2² = 0.38.
    assert abs(same / len(sample) - 0.38) < 0.03


def test_changing_shares_moves_only_the_users_it_must() -> None:
    before = Assignment(_experiment(shares=(0.9, 0.1)))
    after = Assignment(_experiment(shares=(0.8, 0.2)))
    moved = [u for u in USERS[:20000] if before.variant_of(u).name != after.variant_of(u).name]
    assert abs(len(moved) / 20000 - 0.1) < 0.01
    assert all(after.variant_of(u).name == "challenger" for u in moved)


@pytest.mark.parametrize(
    ("variants", "control", "message"),
    [
        ([("champion", 1, 0.5), ("challenger", 2, 0.4)], "champion", "sum to 1"),
        ([("champion", 1, 0.5), ("champion", 2, 0.5)], "champion", "unique"),
        ([("champion", 1, 0.5), ("challenger", 1, 0.5)], "champion", "own model version"),
        ([("a", 1, 0.5), ("b", 2, 0.5)], "champion", "control variant"),
        ([("champion", 1, 1.0)], "champion", "at least 2"),
    ],
)
def test_inconsistent_splits_are_refused_with_the_reason(
    variants: list[tuple[str, int, float]], control: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        VariantSplit(
            control=control, variants=[ExperimentVariant(name=n, model_version=v, share=s) for n, v, s in variants]
        )
