"""Evaluate a candidate, store the report, promote it when the gate says so.

:meth:`Evaluator.promote` is the one writer of promotion state: the champion file in the model
repository and the announcement on the compacted ``models.promoted`` topic (whose newest message
is the champion a ranker follows).  The offline gate and an online experiment's decision both
promote through it.

While an experiment runs, its control serves the champion and its results compare with it: the champion
changes then only by that experiment's decision. A candidate that passes the offline gate meanwhile is
held (its report says so) rather than promoted under the experiment; evaluate it again once the
experiment has ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

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
        measured = evaluate_version(repository, version, champion, holdout)
        decision = decide(measured, version, champion, self.settings.promotion_metric, self.settings.min_improvement)
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
            with tracer("scalerec.evaluator").start_as_current_span("evaluate", attributes={"version": version}):
                report = await asyncio.to_thread(self._evaluate_sync, version)
                log.info("model %d: %s", version, report.decision)
                held = None
                if report.promoted:
                    metrics = report.models[f"model_v{version}"]
                    held = await self.promote(version, metrics, judged_against=report.champion_before)
                if held is not None:
                    update = {"promoted": False, "decision": f"{report.decision}; held: {held}"}
                    report = report.model_copy(update=update)
                    log.info("model %d: %s", version, report.decision)
                if not report.promoted:
                    self.controller.settle()  # the trainer added the candidate to the policy: narrow it again
                # Stored last: a crash before this re-judges the candidate on re-delivery.
                await asyncio.to_thread(self._store_report, report)
                return report

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
                    f"experiment {running!r} is running against {against} "
                    f"(stop or decide it, then POST /v1/evaluate/{version})"
                )
            if not isinstance(judged_against, _Any) and champion != judged_against:
                return (
                    f"the champion became v{champion} while this version was judged against "
                    f"v{judged_against} (POST /v1/evaluate/{version} judges it against the new one)"
                )
            await self.controller.add({version})
            await asyncio.to_thread(repo.write_champion, self.settings.model_repository, repo.RANKER_MODEL, version)
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
            self.controller.settle()  # the old champion stops being served once rankers have swapped
            log.info("model %d is the champion", version)
            return None

    def reports(self) -> list[EvaluationReport]:
        prefix = f"{repo.RANKER_MODEL}|".encode()
        return [
            EvaluationReport.model_validate_json(c[b"r:json"]) for _, c in self.store.scan(s.REPORTS, prefix=prefix)
        ]

    def report(self, version: int) -> EvaluationReport | None:
        cells = self.store.get(s.REPORTS, s.report_key(repo.RANKER_MODEL, version))
        return EvaluationReport.model_validate_json(cells[b"r:json"]) if cells else None
