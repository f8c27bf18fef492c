"""Online experiments: created, changed, stopped and decided here, stored, announced to every ranker.

The evaluator is the one writer of experiment state: the ``EXPERIMENTS`` table (HBase when deployed,
SQLite embedded) holds it, and each change is announced on the compacted ``experiments.state``
topic keyed by model name, whose newest message is what a ranker replica — one started later
too — routes by.  At most one experiment runs per model: users are split once.

Before an experiment (or a change) is announced, every version it needs is served
(:class:`ServingController`), so no ranker is told to route users to a version Triton lacks.

Decision (``decide``): a challenger is promoted when its CTR is higher than the control's with
significance (the 95% interval of the difference above zero), with at least
``min_impressions`` answers per variant and no sample-ratio mismatch; the reason is recorded in
the experiment, which then ends (``concluded``) with its final results stored.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime

from pydantic import ValidationError
from scalerec_adapters.bus import Producer
from scalerec_adapters.store import WideColumnStore
from scalerec_core.telemetry import inject_headers
from scalerec_events.experiments import Experiment, ExperimentOut, ExperimentResults, ExperimentStatus, VariantSplit
from scalerec_events.topics import Topic
from scalerec_models import repository as repo
from scalerec_storage import schema as s

from scalerec_evaluator.config import EvaluatorSettings
from scalerec_evaluator.results import experiment_results
from scalerec_evaluator.schemas import DecisionOut, ExperimentChange, ExperimentCreate
from scalerec_evaluator.service import Evaluator

log = logging.getLogger(__name__)

_STATE = b"x:json"
_RESULTS = b"x:results"


class ExperimentError(Exception):
    """A request that cannot be honoured; ``status`` is the HTTP status that says why (404, 409, 422)."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class Experiments:
    def __init__(
        self, settings: EvaluatorSettings, store: WideColumnStore, producer: Producer, evaluator: Evaluator
    ) -> None:
        self.settings = settings
        self.store = store
        self.producer = producer
        self.evaluator = evaluator
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------ storage

    def get(self, experiment_id: str) -> Experiment | None:
        cells = self.store.get(s.EXPERIMENTS, experiment_id.encode(), [_STATE])
        return Experiment.model_validate_json(cells[_STATE]) if cells else None

    def list(self) -> list[Experiment]:
        return [Experiment.model_validate_json(c[_STATE]) for _, c in self.store.scan(s.EXPERIMENTS, columns=[_STATE])]

    def running(self) -> Experiment | None:
        return next((e for e in self.list() if e.running and e.model == repo.RANKER_MODEL), None)

    def needed_versions(self) -> set[int]:
        """What must be served now: the champion and the running experiment's versions."""
        champion = self.evaluator.champion()
        running = self.running()
        return ({champion} if champion else set()) | set(running.versions() if running else ())

    def _put(self, exp: Experiment, results: ExperimentResults | None = None) -> None:
        cells = {_STATE: exp.model_dump_json().encode()}
        if results is not None:
            cells[_RESULTS] = results.model_dump_json().encode()
        self.store.put(s.EXPERIMENTS, exp.experiment_id.encode(), cells)

    def _stored_results(self, experiment_id: str) -> ExperimentResults | None:
        cells = self.store.get(s.EXPERIMENTS, experiment_id.encode(), [_RESULTS])
        return ExperimentResults.model_validate_json(cells[_RESULTS]) if cells else None

    # ------------------------------------------------------------ reading

    def show(self, experiment_id: str) -> ExperimentOut:
        exp = self._require(experiment_id)
        if exp.running:
            return ExperimentOut(experiment=exp, results=experiment_results(self.store, exp))
        return ExperimentOut(experiment=exp, results=self._stored_results(experiment_id))

    def _require(self, experiment_id: str) -> Experiment:
        exp = self.get(experiment_id)
        if exp is None:
            raise ExperimentError(404, f"no experiment {experiment_id!r}", "experiment_id")
        return exp

    # ------------------------------------------------------------ changes

    def _check_versions(self, split: VariantSplit) -> None:
        on_disk = set(repo.list_versions(self.settings.model_repository, repo.RANKER_MODEL))
        for v in split.variants:
            if v.model_version not in on_disk:
                raise ExperimentError(
                    422,
                    f"variant {v.name!r}: model version {v.model_version} is not in the model repository "
                    f"(versions: {sorted(on_disk) or 'none'})",
                    "variants",
                )
        champion = self.evaluator.champion()
        control = split.variant(split.control)
        if champion is not None and control.model_version != champion:
            raise ExperimentError(
                422,
                f"control variant {split.control!r} serves version {control.model_version}, "
                f"but the champion is version {champion}",
                "variants",
            )

    async def _announce(self, exp: Experiment) -> None:
        await self.producer.send(
            self.settings.topic(Topic.EXPERIMENTS),
            exp.model_dump_json().encode(),
            key=exp.model.encode(),
            headers=inject_headers(),
        )

    async def create(self, spec: ExperimentCreate) -> Experiment:
        # The promotion lock too: a champion that changed between the control's check and the experiment's
        # start would leave it comparing against a version that no longer serves outside it.
        async with self._lock, self.evaluator.promotions:
            await asyncio.to_thread(self._check_versions, spec)
            running = await asyncio.to_thread(self.running)
            if running is not None:
                raise ExperimentError(
                    409, f"experiment {running.experiment_id!r} is running; stop or decide it before starting another"
                )
            now = datetime.now(UTC)
            exp = Experiment(
                experiment_id=f"exp-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}",
                model=repo.RANKER_MODEL,
                name=spec.name,
                salt=spec.salt or secrets.token_hex(8),
                control=spec.control,
                variants=spec.variants,
                attribution_window_s=spec.attribution_window_s,
                created_at=now,
                updated_at=now,
            )
            await self.evaluator.controller.add(set(exp.versions()))
            await asyncio.to_thread(self._put, exp)
            await self._announce(exp)
            log.info(
                "experiment %s started: %s",
                exp.experiment_id,
                [(v.name, v.model_version, v.share) for v in exp.variants],
            )
            return exp

    async def change(self, experiment_id: str, change: ExperimentChange) -> Experiment:
        async with self._lock:
            exp = await asyncio.to_thread(self._require, experiment_id)
            if not exp.running:
                raise ExperimentError(
                    409, f"experiment {experiment_id!r} is {exp.status.value}; only a running one changes"
                )
            try:
                split = VariantSplit(control=exp.control, variants=change.variants)
            except ValidationError as exc:
                raise ExperimentError(422, "; ".join(e["msg"] for e in exc.errors()), "variants") from None
            await asyncio.to_thread(self._check_versions, split)
            new = exp.model_copy(update={"variants": split.variants, "updated_at": datetime.now(UTC)})
            new = Experiment.model_validate(new.model_dump())
            await self.evaluator.controller.add(set(new.versions()))
            await asyncio.to_thread(self._put, new)
            await self._announce(new)
            self.evaluator.controller.settle()
            return new

    async def _end(self, exp: Experiment, status: ExperimentStatus, reason: str, winner: str | None) -> Experiment:
        results = await asyncio.to_thread(experiment_results, self.store, exp)
        ended = exp.model_copy(
            update={"status": status, "decision": reason, "winner": winner, "updated_at": datetime.now(UTC)}
        )
        await asyncio.to_thread(self._put, ended, results)
        await self._announce(ended)
        self.evaluator.controller.settle()  # the challengers stop being served once rankers have followed
        self.evaluator.rejudge_held_soon()  # candidates held while it ran: judged against the champion it leaves
        return ended

    async def stop(self, experiment_id: str, reason: str = "stopped by an operator") -> Experiment:
        async with self._lock:
            exp = await asyncio.to_thread(self._require, experiment_id)
            if not exp.running:
                return exp  # stopping twice is stopping once
            return await self._end(exp, ExperimentStatus.STOPPED, reason, None)

    async def decide(self, experiment_id: str, min_impressions: int) -> DecisionOut:
        async with self._lock:
            exp = await asyncio.to_thread(self._require, experiment_id)
            if not exp.running:
                raise ExperimentError(409, f"experiment {experiment_id!r} is {exp.status.value}; nothing to decide")
            results = await asyncio.to_thread(experiment_results, self.store, exp)
            verdict = judge(results, min_impressions)
            if verdict is None:
                reason = _no_winner(results, min_impressions)
                kept = exp.model_copy(update={"decision": reason, "updated_at": datetime.now(UTC)})
                await asyncio.to_thread(self._put, kept)
                return DecisionOut(promoted=False, winner=None, model_version=None, reason=reason, experiment=kept)
            name, reason = verdict
            variant = exp.variant(name)
            await self.evaluator.promote(
                variant.model_version,
                {"online_ctr": next(v.ctr for v in results.variants if v.name == name)},
                experiment_id=exp.experiment_id,
            )
            ended = await self._end(exp, ExperimentStatus.CONCLUDED, reason, name)
            log.info("experiment %s: %s", experiment_id, reason)
            return DecisionOut(
                promoted=True, winner=name, model_version=variant.model_version, reason=reason, experiment=ended
            )


def judge(results: ExperimentResults, min_impressions: int) -> tuple[str, str] | None:
    """The challenger to promote and why, or None: CTR up with significance, enough data, no SRM."""
    if results.srm.mismatch:
        return None
    control = next(v for v in results.variants if v.name == results.control)
    winners = []
    for v in results.variants:
        if v.name == results.control or v.ctr_vs_control is None:
            continue
        if min(v.impressions, control.impressions) < min_impressions:
            continue
        if v.ctr_vs_control.low > 0:
            winners.append(v)
    if not winners:
        return None
    best = max(winners, key=lambda v: v.ctr_vs_control.low if v.ctr_vs_control else 0.0)
    i = best.ctr_vs_control
    assert i is not None
    return best.name, (
        f"{best.name} (v{best.model_version}) CTR {best.ctr:.4f} vs {control.name} (v{control.model_version}) "
        f"{control.ctr:.4f}: +{i.diff:.4f}, 95% CI [{i.low:+.4f}, {i.high:+.4f}], p={i.p_value:.3g} "
        f"(two-proportion z-test), {best.impressions} and {control.impressions} impressions, "
        f"no sample-ratio mismatch (p={results.srm.p_value:.2g})"
    )


def _no_winner(results: ExperimentResults, min_impressions: int) -> str:
    if results.srm.mismatch:
        return f"sample-ratio mismatch (chi-square p={results.srm.p_value:.2g}, users {results.srm.users}): results not trusted"
    small = [v.name for v in results.variants if v.impressions < min_impressions]
    if small:
        return f"not enough data yet: {', '.join(small)} under {min_impressions} impressions"
    return "no challenger's CTR is higher than the control's with 95% confidence; the champion stays"
