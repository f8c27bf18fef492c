"""Evaluate a candidate, store the report, promote it when the gate says so."""

from __future__ import annotations

import asyncio
import json
import logging
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
from scalerec_evaluator.gate import decide
from scalerec_evaluator.holdout import build_holdout
from scalerec_evaluator.offline import evaluate_version

log = logging.getLogger(__name__)


class Evaluator:
    def __init__(self, settings: EvaluatorSettings, store: WideColumnStore, producer: Producer) -> None:
        self.settings = settings
        self.store = store
        self.producer = producer
        self._lock = asyncio.Lock()

    def _evaluate_sync(self, version: int) -> dict[str, Any]:
        repository = self.settings.model_repository
        card = repo.read_card(repository, repo.RANKER_MODEL, version)
        cut = int(card.get("data_window", {}).get("end_ms") or 0)
        if not cut:
            raise ValueError(f"model version {version} has no data window in its card; cannot find its holdout")
        champion = repo.read_champion(repository, repo.RANKER_MODEL)
        holdout = build_holdout(self.store, cut, self.settings.max_eval_users)
        report = evaluate_version(repository, version, champion, holdout)
        decision = decide(report, version, champion, self.settings.promotion_metric, self.settings.min_improvement)
        report.update(
            model=repo.RANKER_MODEL,
            version=version,
            champion_before=champion,
            metric=self.settings.promotion_metric,
            promoted=decision.promote,
            decision=decision.reason,
            holdout_start_ms=cut,
            evaluated_at=datetime.now(UTC).isoformat(),
            card_metrics=card.get("metrics", {}),
        )
        if decision.promote:
            # Keep serving the old champion next to the new one until rankers have swapped.
            versions = [v for v in (champion, version) if v is not None]
            repo.set_served_versions(repository, repo.RANKER_MODEL, versions)
            repo.write_champion(repository, repo.RANKER_MODEL, version)
        self.store.put(s.REPORTS, s.report_key(repo.RANKER_MODEL, version), {b"r:json": json.dumps(report).encode()})
        return report

    async def evaluate(self, version: int) -> dict[str, Any]:
        async with self._lock:  # one evaluation at a time: they share the champion
            with tracer("scalerec.evaluator").start_as_current_span("evaluate", attributes={"version": version}):
                report = await asyncio.to_thread(self._evaluate_sync, version)
                log.info("model %d: %s", version, report["decision"])
                if report["promoted"]:
                    ann = ModelAnnouncement(
                        model=repo.RANKER_MODEL,
                        version=version,
                        repository=str(self.settings.model_repository),
                        created_at=datetime.now(UTC),
                        metrics={k: float(v) for k, v in report["models"][f"model_v{version}"].items()},
                    )
                    await self.producer.send(
                        self.settings.topic(Topic.MODELS_PROMOTED),
                        ann.model_dump_json().encode(),
                        key=repo.RANKER_MODEL.encode(),
                        headers=inject_headers(),
                    )
                return report

    def reports(self) -> list[dict[str, Any]]:
        prefix = f"{repo.RANKER_MODEL}|".encode()
        return [json.loads(c[b"r:json"]) for _, c in self.store.scan(s.REPORTS, prefix=prefix)]

    def report(self, version: int) -> dict[str, Any] | None:
        cells = self.store.get(s.REPORTS, s.report_key(repo.RANKER_MODEL, version))
        return json.loads(cells[b"r:json"]) if cells else None
