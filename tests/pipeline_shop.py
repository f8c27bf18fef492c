"""The shop both whole-pipeline tests train on: tests/e2e (processes, embedded backends) and
tests/deploy (the chart's containers, real backends).

Whether the model trained on it beats item-CF at the evaluator's gate must not move with the wall
clock. It did when the window ended at "now": the time split and the hour and weekday context
changed with the time of the run (e2e: passed at 00:22, failed at 01:09; deploy, stop 18's CI:
ndcg@10 0.2238 against item-CF's 0.2259). The generator now makes the same shop wherever its window
ends (drawn in one frame, then moved); the window still ends on a fixed Friday 23:59 UTC moved on by
whole weeks to the latest one in the past, so that the hour and weekday of every event, which the
models take as context, are the same in every run too, and the events stay recent (the stores' day
counters keep 60 days) however long after that Friday the tests run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from scalerec_synthetic import Shop, ShopConfig, generate_shop

_ANCHOR = datetime(2026, 12, 4, 23, 59, tzinfo=UTC)  # a Friday
_WEEK = timedelta(days=7)


def window_end(now: datetime | None = None) -> datetime:
    """The latest ``_ANCHOR + k weeks`` (k may be negative) before ``now``."""
    now = now or datetime.now(UTC)
    return _ANCHOR + _WEEK * ((now - _ANCHOR) // _WEEK)


def pipeline_shop(now: datetime | None = None) -> Shop:
    return generate_shop(ShopConfig(users=1200, items=600, events_per_user=25, seed=11, end=window_end(now)))
