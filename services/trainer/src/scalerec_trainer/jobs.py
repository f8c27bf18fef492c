"""Training jobs: one at a time, run off the event loop, announced on the bus when done.

A job reports as it goes: every finished epoch (model, epoch, loss, validation NDCG@10) is
appended to its ``progress`` (``GET /v1/train/{job_id}``) and set on the trainer's gauges
(``/metrics``), through the one callback the training loops call per epoch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel
from scalerec_adapters.bus import Producer
from scalerec_adapters.store import WideColumnStore
from scalerec_core.telemetry import meter, tracer

from scalerec_trainer.config import TrainerSettings
from scalerec_trainer.pipeline import NotEnoughData, announce_candidate, train_version

if TYPE_CHECKING:
    from scalerec_models.training import EpochReport

log = logging.getLogger(__name__)

Status = Literal["queued", "running", "succeeded", "failed"]


class EpochProgress(BaseModel):
    """One finished epoch of one model."""

    model: str
    epoch: int
    max_epochs: int
    loss: float
    val_ndcg_at_10: float | None
    elapsed_s: float


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
    progress: list[EpochProgress] = field(default_factory=list)


@functools.cache
def _instruments() -> dict[str, Any]:
    m = meter("scalerec.trainer")
    return {
        "loss": m.create_gauge("scalerec.trainer.loss", description="Mean training loss of the last epoch, per model"),
        "ndcg": m.create_gauge(
            "scalerec.trainer.validation.ndcg", description="Validation NDCG@10 after the last epoch, per model"
        ),
        "epoch": m.create_gauge("scalerec.trainer.epoch", description="Last finished epoch, per model"),
        "duration": m.create_histogram(
            "scalerec.trainer.job.duration",
            unit="s",
            description="Wall time of training jobs, by outcome",
            explicit_bucket_boundaries_advisory=[10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400],
        ),
    }


def _reporter(job: Job) -> Any:
    """The per-epoch callback: runs in the training thread, so it only appends and sets gauges."""
    instruments = _instruments()

    def on_epoch(report: EpochReport) -> None:
        job.progress.append(
            EpochProgress(
                model=report.model,
                epoch=report.epoch,
                max_epochs=report.epochs,
                loss=round(report.loss, 6),
                val_ndcg_at_10=None if report.val_ndcg is None else round(report.val_ndcg, 6),
                elapsed_s=round(report.elapsed_s, 2),
            )
        )
        attrs = {"model": report.model}
        instruments["loss"].set(report.loss, attrs)
        instruments["epoch"].set(report.epoch, attrs)
        if report.val_ndcg is not None:
            instruments["ndcg"].set(report.val_ndcg, attrs)

    return on_epoch


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
        started = time.perf_counter()
        with tracer("scalerec.trainer").start_as_current_span("train", attributes={"job_id": job.job_id}):
            try:
                outcome = await asyncio.to_thread(train_version, self.settings, self.store, _reporter(job))
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
                _instruments()["duration"].record(time.perf_counter() - started, {"status": job.status})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
