"""What the ranker serves, as metrics: answers by model version, variant and fallback reason.

Labels are bounded: the model version, the experiment variant, and a fallback *code* (the
``fallback_reason`` in the answer is prose with exception text in it, unbounded as a label).

This is the hot path, so an answer costs one dict increment: the counts live in this process
and an *observable* counter reports them when a reader collects (the same cumulative counter
``scalerec_ranker_recommendations_total`` to Prometheus).  A synchronous ``Counter.add`` hashed
the attributes and took the SDK's aggregation lock on every request (~3 % of the ranker's CPU).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from scalerec_core.telemetry import meter

#: The variant every request gets until experiments split traffic.
CHAMPION = "champion"


class Fallback(StrEnum):
    """Why an answer did not come from the primary scorer of a model (``none``: it did)."""

    NONE = "none"
    UNKNOWN_USER = "unknown_user"
    HISTORY_UNAVAILABLE = "history_unavailable"
    NO_MODEL = "no_model"
    SCORER_UNAVAILABLE = "scorer_unavailable"  # the baseline order answered
    SCORER_DEGRADED = "scorer_degraded"  # a fallback scorer answered (e.g. onnxruntime behind Triton)


#: Answers served in this process by (model version, variant, fallback code); read at collection.
_SERVED: Counter[tuple[int | None, str, str]] = Counter()


def _observe_served(_: CallbackOptions) -> Iterable[Observation]:
    for (version, variant, fallback), n in list(_SERVED.items()):
        yield Observation(
            n,
            {
                "model_version": "none" if version is None else str(version),
                "variant": variant,
                "fallback_reason": fallback,
            },
        )


@functools.cache
def _served_counter() -> Any:
    return meter("scalerec.ranker").create_observable_counter(
        "scalerec.ranker.recommendations",
        callbacks=[_observe_served],
        unit="{response}",
        description="Recommendation answers by model version, experiment variant and fallback reason",
    )


#: What the model-version gauge reads: the ``served_versions`` of the ranker built last in this process.
_VERSIONS: list[Callable[[], dict[str, int]]] = [dict]


def _observe_versions(_: CallbackOptions) -> Iterable[Observation]:
    versions = _VERSIONS[0]() or {CHAMPION: 0}
    for variant, version in versions.items():
        yield Observation(version, {"variant": variant})


@functools.cache
def _version_gauge() -> Any:
    return meter("scalerec.ranker").create_observable_gauge(
        "scalerec.ranker.model.version",
        callbacks=[_observe_versions],
        description="Model version this ranker process serves to each variant (champion outside experiments; "
        "0: none yet)",
    )


class ServingMetrics:
    """Counts every answer; reports the model version in service as a gauge (read at collection)."""

    def __init__(self, served_versions: Callable[[], dict[str, int]]) -> None:
        _served_counter()
        # One gauge per process (instruments are process-wide): it reads the newest ranker's models.
        _VERSIONS[0] = served_versions
        _version_gauge()

    def served(self, model_version: int | None, fallback: Fallback, variant: str = CHAMPION) -> None:
        _SERVED[(model_version, variant, fallback.value)] += 1
