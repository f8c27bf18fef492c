"""POST /v1/train, GET /v1/train/{job_id}, GET /v1/train."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, Field
from scalerec_core.auth import Scope, require
from scalerec_core.http import StrictQueryRoute, field_error
from scalerec_events.models import ID_MAX_LENGTH, ID_PATTERN

from scalerec_trainer.deps import TrainerDep
from scalerec_trainer.jobs import EpochProgress, Job

router = APIRouter(prefix="/v1", tags=["training"], dependencies=[require(Scope.ADMIN)], route_class=StrictQueryRoute)


class JobView(BaseModel):
    job_id: str
    reason: str
    status: str
    created_at: datetime
    finished_at: datetime | None
    version: int | None
    error: str | None
    seconds: float | None
    metrics: dict[str, float]
    progress: list[EpochProgress] = Field(
        default_factory=list,
        description="Every finished epoch so far, in order (the ranker's, then the two-tower's): "
        "epoch, training loss, validation NDCG@10.",
    )
    already_running: bool = False

    @classmethod
    def of(cls, job: Job, already_running: bool = False) -> JobView:
        return cls(**{**job.__dict__, "progress": list(job.progress)}, already_running=already_running)


@router.post(
    "/train",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    summary="Start a training run",
    responses={422: {"description": "A body other than nothing, `{}` or `null`: a run takes none"}},
)
async def train(trainer: TrainerDep, request: Request) -> JobView:
    """Trains on every example before the holdout window; the new version is announced as a candidate.

    Takes no body (nothing, ``{}`` or ``null``): what a run trains is the trainer's settings (docs/configuration.md).
    """
    body = await request.body()
    if body.strip() and _json_value(body) not in ({}, None):
        # e.g. {"epochs": 3}: refused rather than ignored while a run with the settings' epochs starts
        message = f"POST /v1/train takes no body (got {len(body)} bytes): a run is configured by the trainer's settings"
        raise field_error(422, "body", message)
    job, started = trainer.submit(reason="api")
    return JobView.of(job, already_running=not started)


def _json_value(raw: bytes) -> object:
    """What ``raw`` holds as JSON, or ``raw`` itself when it is not JSON."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@router.get("/train/{job_id}", response_model=JobView, summary="A training run's status and progress by epoch")
async def job_status(
    trainer: TrainerDep, job_id: Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
) -> JobView:
    job = trainer.jobs.get(job_id)
    if job is None:
        raise field_error(404, "job_id", f"no training job {job_id!r}")
    return JobView.of(job)


@router.get("/train", response_model=list[JobView], summary="All training runs of this process")
async def jobs(trainer: TrainerDep) -> list[JobView]:
    return [JobView.of(j) for j in trainer.jobs.values()]
