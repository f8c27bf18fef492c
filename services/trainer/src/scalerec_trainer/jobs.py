"""Training jobs: one at a time, run off the event loop, announced on the bus when done."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from scalerec_adapters.bus import Producer
from scalerec_adapters.store import WideColumnStore
from scalerec_core.telemetry import tracer

from scalerec_trainer.config import TrainerSettings
from scalerec_trainer.pipeline import NotEnoughData, announce_candidate, train_version

log = logging.getLogger(__name__)

Status = Literal["queued", "running", "succeeded", "failed"]


@dataclass
class Job:
    job_id: str
    reason: str
    status: Status = "queued"
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    version: int | None = None
    error: str | None = None
    seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class Trainer:
    def __init__(self, settings: TrainerSettings, store: WideColumnStore, producer: Producer) -> None:
        self.settings = settings
        self.store = store
        self.producer = producer
        self.jobs: dict[str, Job] = {}
        self.current: Job | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, reason: str) -> tuple[Job, bool]:
        """A new job, or the one already queued/running (training twice at once helps nobody)."""
        if self.current and self.current.status in ("queued", "running"):
            return self.current, False
        job = Job(job_id=uuid.uuid4().hex[:12], reason=reason)
        self.jobs[job.job_id] = job
        self.current = job
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job, True

    async def _run(self, job: Job) -> None:
        job.status = "running"
        with tracer("scalerec.trainer").start_as_current_span("train", attributes={"job_id": job.job_id}):
            try:
                outcome = await asyncio.to_thread(train_version, self.settings, self.store)
            except NotEnoughData as exc:
                job.status, job.error = "failed", str(exc)
                log.warning("training job %s skipped: %s", job.job_id, exc)
            except Exception as exc:
                job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
                log.exception("training job %s failed", job.job_id)
            else:
                job.version, job.seconds = outcome.version, round(outcome.seconds, 2)
                job.metrics = {k: float(v) for k, v in outcome.card.get("metrics", {}).items()}
                await announce_candidate(self.producer, self.settings, outcome)
                job.status = "succeeded"
            finally:
                job.finished_at = datetime.now(UTC)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
