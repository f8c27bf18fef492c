"""Evaluate a candidate, store the report, promote it when the gate says so.

:meth:`Evaluator.promote` is the one writer of promotion state: the champion file in the model
repository and the announcement on the compacted ``models.promoted`` topic (whose newest message
is the champion a ranker follows).  The offline gate and an online experiment's decision both
promote through it.

While an experiment runs, its control serves the champion and its results compare with it: the champion
changes then only by that experiment's decision. A candidate that passes the offline gate meanwhile is
held (its report's ``held`` says why) rather than promoted under the experiment, and judged again once
the experiment has ended (:meth:`Evaluator.rejudge_held`, also at start-up: an evaluator that stopped
between the two still judges it). One judged against a champion that an experiment's decision replaced
while it was being evaluated is judged again at once, against the new champion.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from scalerec_adapters.bus import Producer
from scalerec_adapters.store import WideColumnStore
from scalerec_core.telemetry import inject_headers, tracer
from scalerec_events.models import ModelAnnouncement
from scalerec_events.topics import Topic
from scalerec_models import repository as repo
from scalerec_storage import schema as s

from scalerec_evaluator.config import EvaluatorSettings
from scalerec_evaluator.gate import Decision, decide
from scalerec_evaluator.holdout import build_holdout
from scalerec_evaluator.offline import evaluate_version
from scalerec_evaluator.schemas import EvaluationReport
from scalerec_evaluator.serving import ServingController

log = logging.getLogger(__name__)


class _Any:
    """``promote(judged_against=...)`` left out: whatever the champion is (an experiment's decision)."""


_ANY = _Any()
# Judgements of one version in one evaluate(): again when the champion changed while it was judged.
_JUDGEMENTS = 3
# What a shutdown waits for a re-judge in progress (as the candidates worker's stop waits for its batch).
CLOSE_WAIT_S = 15.0


class Evaluator:
    def __init__(
        self,
        settings: EvaluatorSettings,
        store: WideColumnStore,
        producer: Producer,
        controller: ServingController,
        running_experiment: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.producer = producer
        self.controller = controller
        self.running_experiment = running_experiment  # the running experiment's id, read from the store
        self._lock = asyncio.Lock()
        # Held while the champion may change, and by whoever checks an experiment against the champion.
        self.promotions = asyncio.Lock()
        self._rejudging: set[asyncio.Task[int | None]] = set()
        self._closing = False

    def champion(self) -> int | None:
        return repo.read_champion(self.settings.model_repository, repo.RANKER_MODEL)

    def _evaluate_sync(self, version: int) -> EvaluationReport:
        repository = self.settings.model_repository
        card = repo.read_card(repository, repo.RANKER_MODEL, version)
        cut = int(card.get("data_window", {}).get("end_ms") or 0)
        if not cut:
            raise ValueError(f"model version {version} has no data window in its card; cannot find its holdout")
        champion = repo.read_champion(repository, repo.RANKER_MODEL)
        holdout = build_holdout(self.store, cut, self.settings.max_eval_users)
        measured = evaluate_version(repository, version, champion, holdout, self.settings)
        decision = decide(
            measured,
            version,
            champion,
            self.settings.promotion_metric,
            self.settings.min_improvement,
            self.settings.max_recall_drop,
        )
        if decision.promote and champion is not None and self.settings.promotion == "online":
            decision = Decision(False, f"{decision.reason}; a challenger now: promotion waits for an online experiment")
        report = measured.model_copy(
            update=dict(
                model=repo.RANKER_MODEL,
                version=version,
                champion_before=champion,
                metric=self.settings.promotion_metric,
                promoted=decision.promote,
                decision=decision.reason,
                holdout_start_ms=cut,
                evaluated_at=datetime.now(UTC).isoformat(),
                card_metrics={k: float(v) for k, v in card.get("metrics", {}).items() if isinstance(v, int | float)},
            )
        )
        return report

    def _store_report(self, report: EvaluationReport) -> None:
        self.store.put(
            s.REPORTS, s.report_key(repo.RANKER_MODEL, report.version), {b"r:json": report.model_dump_json().encode()}
        )

    async def evaluate(self, version: int) -> EvaluationReport:
        async with self._lock:  # one evaluation at a time: they share the champion
            return await self._evaluate(version)

    async def _evaluate(self, version: int) -> EvaluationReport:
        """:meth:`evaluate` with ``self._lock`` held by the caller."""
        with tracer("scalerec.evaluator").start_as_current_span("evaluate", attributes={"version": version}):
            for judged in range(1, _JUDGEMENTS + 1):
                report = await asyncio.to_thread(self._evaluate_sync, version)
                log.info("model %d: %s", version, report.decision)
                held = None
                if report.promoted:
                    metrics = report.models[f"model_v{version}"]
                    held = await self.promote(version, metrics, judged_against=report.champion_before)
                if held is None or judged == _JUDGEMENTS:
                    break
                if await asyncio.to_thread(self.running_experiment) is not None:
                    break  # judged again when the experiment ends (rejudge_held)
                # The champion changed while this version was judged (an experiment's decision): against it now.
                log.info("model %d: %s; judging it again", version, held)
            if held is not None:
                update = {"promoted": False, "held": held, "decision": f"{report.decision}; held: {held}"}
                report = report.model_copy(update=update)
                log.info("model %d: %s", version, report.decision)
            if not report.promoted:
                self.controller.settle()  # the trainer added the candidate to the policy: narrow it again
            # Stored last: a crash before this re-judges the candidate on re-delivery.
            await asyncio.to_thread(self._store_report, report)
            return report

    async def rejudge_held(self) -> int | None:
        """Judge again the candidates held while an experiment ran, newest first, until one is promoted.

        -> the version promoted, or None. A candidate is held when it passed the gate under a running
        experiment; once none runs, each held version newer than the champion is judged against it, the
        newest (freshest) first, then the older ones while none is better. A version pruned from the
        repository meanwhile is skipped, one that fails to evaluate is logged and skipped (its report stays
        held: the next end of an experiment or start-up tries it again). Nothing happens while an
        experiment runs. Under the evaluation lock from the start: a report an evaluation in progress is
        about to store as held is read, and re-judges started one after the other never judge a version
        twice (the champion is read again before each).
        """
        async with self._lock:
            if await asyncio.to_thread(self.running_experiment) is not None:
                return None
            reports = await asyncio.to_thread(self.reports)
            held = sorted((r.version for r in reports if r.held is not None), reverse=True)
            repository = self.settings.model_repository
            for version in held:
                champion = self.champion()
                if self._closing or (champion is not None and version <= champion):
                    continue
                if version not in await asyncio.to_thread(repo.list_versions, repository, repo.RANKER_MODEL):
                    log.info("model %d was held but is no longer in the repository; not judged again", version)
                    continue
                log.info("model %d was held under an experiment that has ended: judging it again", version)
                try:
                    report = await self._evaluate(version)
                except Exception:
                    log.exception("model %d could not be judged again; it stays held", version)
                    continue
                if report.promoted:
                    return version
                if report.held is not None:
                    return None  # another experiment started meanwhile: its end judges them again
            return None

    def rejudge_held_soon(self) -> None:
        """:meth:`rejudge_held` in the background (an experiment's stop or decision answers without waiting
        for evaluations); failures are logged, and the next end of an experiment or start-up tries again."""

        async def run() -> int | None:
            try:
                return await self.rejudge_held()
            except Exception:
                log.exception("judging held candidates again failed")
                return None

        task = asyncio.get_running_loop().create_task(run(), name="rejudge-held")
        self._rejudging.add(task)
        task.add_done_callback(self._rejudging.discard)

    async def close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """At a lifespan's end: no further held version is started, the one being judged gets ``timeout_s``
        to finish (a promotion is not cut between the champion file and its announcement); cancelled after."""
        self._closing = True
        tasks = list(self._rejudging)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout_s)
        for task in late:
            log.warning("judging a held candidate again did not finish within %.0f s of shutdown: cancelled", timeout_s)
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def promote(
        self,
        version: int,
        metrics: dict[str, float],
        *,
        experiment_id: str | None = None,
        judged_against: int | _Any | None = _ANY,
    ) -> str | None:
        """Make ``version`` the champion: served first, then recorded, then announced to every ranker.

        -> None, or (nothing changed) why it is held: a running experiment holds the champion (only its own
        decision, ``experiment_id``, may change it), or the champion is no longer the one ``version`` was
        judged against (an experiment's decision promoted another while it was being evaluated).
        """
        async with self.promotions:
            running = await asyncio.to_thread(self.running_experiment)
            champion = self.champion()
            against = "no champion" if champion is None else f"champion v{champion}"
            if running is not None and running != experiment_id:
                return (
                    f"experiment {running!r} is running against {against} (judged again when it is stopped or decided)"
                )
            if not isinstance(judged_against, _Any) and champion != judged_against:
                return f"the champion became v{champion} while this version was judged against v{judged_against}"
            await self.controller.add({version})
            # Not cut in two by a cancellation (a shutdown): a champion file without its announcement would
            # leave running rankers on the old champion and those started later on this one.
            await asyncio.shield(self._crown(version, metrics))
            return None

    async def _crown(self, version: int, metrics: dict[str, float]) -> None:
        """The champion file, then its announcement on the compacted topic every ranker follows.

        The promotion is recorded first and marked announced last: one cut in between (the bus failing,
        the process killed) is announced by :meth:`finish_promotion`, at the next promotion or start-up.
        """
        await self.finish_promotion()
        await asyncio.to_thread(self._record_promotion, version, metrics, announced=False)
        await asyncio.to_thread(repo.write_champion, self.settings.model_repository, repo.RANKER_MODEL, version)
        await self._announce(version, metrics)
        await asyncio.to_thread(self._record_promotion, version, metrics, announced=True)
        self.controller.settle()  # the old champion stops being served once rankers have swapped
        log.info("model %d is the champion", version)

    async def _announce(self, version: int, metrics: dict[str, float]) -> None:
        ann = ModelAnnouncement(
            model=repo.RANKER_MODEL,
            version=version,
            repository=str(self.settings.model_repository),
            created_at=datetime.now(UTC),
            metrics={k: float(v) for k, v in metrics.items()},
        )
        await self.producer.send(
            self.settings.topic(Topic.MODELS_PROMOTED),
            ann.model_dump_json().encode(),
            key=repo.RANKER_MODEL.encode(),
            headers=inject_headers(),
        )

    def _record_promotion(self, version: int, metrics: dict[str, float], *, announced: bool) -> None:
        state = {"version": version, "metrics": metrics, "announced": announced}
        self.store.put(s.REPORTS, s.promotion_key(repo.RANKER_MODEL), {b"r:promotion": json.dumps(state).encode()})

    def _pending_promotion(self) -> dict[str, Any] | None:
        cells = self.store.get(s.REPORTS, s.promotion_key(repo.RANKER_MODEL))
        state: dict[str, Any] | None = json.loads(cells[b"r:promotion"]) if cells else None
        return None if state is None or state.get("announced") else state

    async def finish_promotion(self) -> int | None:
        """Announce a champion whose promotion was cut before its announcement -> its version, or None.

        Until then rankers already running serve the old champion and those started later the new one
        (they read the champion file). A promotion cut before the file changed is only marked done: its
        candidate is judged again when its announcement is re-delivered. Raises what the bus raises
        (still not announced: the next promotion or start-up tries again).
        """
        pending = await asyncio.to_thread(self._pending_promotion)
        if pending is None:
            return None
        version, metrics = int(pending["version"]), {k: float(v) for k, v in pending["metrics"].items()}
        if self.champion() == version:
            await self._announce(version, metrics)
            log.warning("model %d was made the champion but not announced: announced now", version)
        await asyncio.to_thread(self._record_promotion, version, metrics, announced=True)
        return version if self.champion() == version else None

    def reports(self) -> list[EvaluationReport]:
        prefix = f"{repo.RANKER_MODEL}|".encode()
        return [
            EvaluationReport.model_validate_json(c[b"r:json"]) for _, c in self.store.scan(s.REPORTS, prefix=prefix)
        ]

    def report(self, version: int) -> EvaluationReport | None:
        cells = self.store.get(s.REPORTS, s.report_key(repo.RANKER_MODEL, version))
        return EvaluationReport.model_validate_json(cells[b"r:json"]) if cells else None
