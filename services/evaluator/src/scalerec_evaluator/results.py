"""Per-variant results from the stored exposure rows: impressions joined with their feedback.

One prefix scan of an experiment's rows gives each request's feedback rows followed by its
impression row (``<exp>|<request>|f|…`` sorts before ``<exp>|<request>|i``), so the join streams
with one request in memory at a time.  A feedback event counts when it comes within the attribution
window after its impression (a minute of clock skew before it is tolerated).  Which variant a
request belongs to is the impression's word, not the feedback's.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from scalerec_adapters.store import WideColumnStore
from scalerec_events.experiments import Experiment, ExperimentResults, Interval, SampleRatioCheck, VariantResult
from scalerec_metrics.experiments import (
    Difference,
    Moments,
    mean_difference,
    ndcg_of_clicks,
    proportion_difference,
    sample_ratio_mismatch,
)
from scalerec_storage import schema as s

from scalerec_evaluator.schemas import OnlineVersion

CLOCK_SKEW_MS = 60_000
K = 10


@dataclass
class Tally:
    impressions: int = 0
    items_shown: int = 0
    fallbacks: int = 0
    clicks: int = 0
    conversions: int = 0
    clicked: int = 0
    converted: int = 0
    ndcg: Moments = field(default_factory=Moments)
    users: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Joined:
    impression: dict[str, Any]
    feedback: list[dict[str, Any]]


def joined_requests(store: WideColumnStore, prefix: bytes, window_ms: int, unattributed: list[int]) -> Iterator[Joined]:
    """Each stored impression under ``prefix`` with its feedback inside the window."""
    current: bytes | None = None
    pending: list[dict[str, Any]] = []
    for key, cells in store.scan(s.EXPOSURES, prefix=prefix or None):
        request = key.rsplit(s.SEP, 2)[0] if b"o:f" in cells else key.rsplit(s.SEP, 1)[0]  # experiment|request
        if request != current:
            unattributed[0] += len(pending)  # feedback of a request whose impression is gone
            current, pending = request, []
        if b"o:f" in cells:
            pending.append(json.loads(cells[b"o:f"]))
        elif b"o:i" in cells:
            imp = json.loads(cells[b"o:i"])
            start = int(imp["ts_ms"])
            user = imp["user_id"]
            # Feedback of another user naming this request (its id is in every answer) is not this answer's:
            # anyone with an ingest key could add clicks to a variant. Rows stored before user_id was kept count.
            inside = [
                f
                for f in pending
                if start - CLOCK_SKEW_MS <= int(f["ts_ms"]) <= start + window_ms and f.get("user_id", user) == user
            ]
            unattributed[0] += len(pending) - len(inside)
            pending = []
            yield Joined(imp, inside)
    unattributed[0] += len(pending)


def _tally(
    store: WideColumnStore, prefix: bytes, window_ms: int, group: Callable[[dict[str, Any]], str]
) -> tuple[dict[str, Tally], int]:
    tallies: dict[str, Tally] = defaultdict(Tally)
    unattributed = [0]
    for j in joined_requests(store, prefix, window_ms, unattributed):
        imp = j.impression
        t = tallies[group(imp)]
        t.impressions += 1
        t.items_shown += len(imp["items"])
        t.fallbacks += bool(imp.get("fallback"))
        t.users.add(imp["user_id"])
        clicks = [f for f in j.feedback if f["click"]]
        conversions = [f for f in j.feedback if f["conversion"]]
        t.clicks += len(clicks)
        t.conversions += len(conversions)
        t.clicked += bool(clicks)
        t.converted += bool(conversions)
        positions = imp["items"]
        t.ndcg = t.ndcg.add(ndcg_of_clicks([positions[f["item_id"]] for f in clicks if f["item_id"] in positions], K))
    return tallies, unattributed[0]


def _interval(d: Difference | None) -> Interval | None:
    if d is None:
        return None
    return Interval(diff=d.diff, low=d.low, high=d.high, p_value=d.p_value, significant=d.significant)


def experiment_results(store: WideColumnStore, experiment: Experiment) -> ExperimentResults:
    tallies, unattributed = _tally(
        store,
        s.exposure_prefix(experiment.experiment_id),
        experiment.attribution_window_s * 1000,
        lambda imp: str(imp.get("variant")),
    )
    control = tallies[experiment.control]
    out = []
    for v in experiment.variants:
        t = tallies[v.name]
        res = VariantResult(
            name=v.name,
            model_version=v.model_version,
            share=v.share,
            users=len(t.users),
            impressions=t.impressions,
            items_shown=t.items_shown,
            clicks=t.clicks,
            conversions=t.conversions,
            clicked_impressions=t.clicked,
            converted_impressions=t.converted,
            ctr=t.clicked / t.impressions if t.impressions else 0.0,
            conversion_rate=t.converted / t.impressions if t.impressions else 0.0,
            ndcg_at_10=t.ndcg.mean,
            fallback_share=t.fallbacks / t.impressions if t.impressions else 0.0,
        )
        if v.name != experiment.control:
            res = res.model_copy(
                update={
                    "ctr_vs_control": _interval(
                        proportion_difference(control.clicked, control.impressions, t.clicked, t.impressions)
                    ),
                    "conversion_rate_vs_control": _interval(
                        proportion_difference(control.converted, control.impressions, t.converted, t.impressions)
                    ),
                    "ndcg_at_10_vs_control": _interval(mean_difference(control.ndcg, t.ndcg)),
                }
            )
        out.append(res)
    users = {v.name: len(tallies[v.name].users) for v in experiment.variants}
    srm = sample_ratio_mismatch(list(users.values()), [v.share for v in experiment.variants])
    return ExperimentResults(
        experiment_id=experiment.experiment_id,
        computed_at=datetime.now(UTC),
        control=experiment.control,
        attribution_window_s=experiment.attribution_window_s,
        variants=out,
        srm=SampleRatioCheck(
            users=users,
            expected_shares={v.name: v.share for v in experiment.variants},
            chi2=srm.chi2,
            p_value=srm.p_value,
            mismatch=srm.mismatch,
        ),
        unattributed_feedback=unattributed,
    )


def online_by_version(store: WideColumnStore, window_ms: int) -> dict[str, OnlineVersion]:
    """Every stored answer, grouped by the model version that produced it (``baseline`` for fallbacks)."""

    def version(imp: dict[str, Any]) -> str:
        v = imp.get("model_version")
        return "baseline" if imp.get("fallback") or v is None else f"model_v{v}"

    tallies, _ = _tally(store, b"", window_ms, version)
    return {
        name: OnlineVersion(
            requests=t.impressions,
            impressions=t.items_shown,
            clicks=t.clicks,
            conversions=t.conversions,
            ctr=t.clicked / t.impressions if t.impressions else 0.0,
            conversion_rate=t.converted / t.impressions if t.impressions else 0.0,
        )
        for name, t in sorted(tallies.items())
    }
