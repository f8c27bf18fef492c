"""/v1/experiments: create, change, stop, read and decide online experiments (admin scope)."""

from __future__ import annotations

import asyncio
from typing import Annotated, NoReturn

from fastapi import APIRouter, HTTPException, Path
from scalerec_core.auth import Scope, require
from scalerec_core.http import StrictQueryRoute
from scalerec_events.experiments import Experiment, ExperimentOut
from scalerec_events.models import ID_MAX_LENGTH, ID_PATTERN

from scalerec_evaluator.deps import ExperimentsDep, SettingsDep
from scalerec_evaluator.experiments import ExperimentError
from scalerec_evaluator.schemas import DecisionOut, ExperimentChange, ExperimentCreate

router = APIRouter(
    prefix="/v1/experiments", tags=["experiments"], dependencies=[require(Scope.ADMIN)], route_class=StrictQueryRoute
)
ExperimentId = Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]


def _fail(exc: ExperimentError) -> NoReturn:
    errors = [{"field": exc.field, "message": str(exc)}] if exc.field else []
    raise HTTPException(exc.status, {"message": str(exc), "errors": errors}) from exc


@router.post("", status_code=201, response_model=Experiment, summary="Start an experiment")
async def create(lab: ExperimentsDep, spec: ExperimentCreate) -> Experiment:
    """Every variant's version must be in the model repository, the control must serve the champion,
    shares must sum to 1, and no other experiment may be running (409)."""
    try:
        return await lab.create(spec)
    except ExperimentError as exc:
        _fail(exc)


@router.get("", response_model=list[Experiment], summary="Every experiment, running or ended")
async def list_all(lab: ExperimentsDep) -> list[Experiment]:
    return await asyncio.to_thread(lab.list)


@router.get("/{experiment_id}", response_model=ExperimentOut, summary="An experiment and its per-variant results")
async def show(lab: ExperimentsDep, experiment_id: ExperimentId) -> ExperimentOut:
    try:
        return await asyncio.to_thread(lab.show, experiment_id)
    except ExperimentError as exc:
        _fail(exc)


@router.patch("/{experiment_id}", response_model=Experiment, summary="Change a running experiment's variants")
async def change(lab: ExperimentsDep, experiment_id: ExperimentId, change: ExperimentChange) -> Experiment:
    try:
        return await lab.change(experiment_id, change)
    except ExperimentError as exc:
        _fail(exc)


@router.post("/{experiment_id}/stop", response_model=Experiment, summary="Stop an experiment (nothing promoted)")
async def stop(lab: ExperimentsDep, experiment_id: ExperimentId) -> Experiment:
    try:
        return await lab.stop(experiment_id)
    except ExperimentError as exc:
        _fail(exc)


@router.post("/{experiment_id}/decide", response_model=DecisionOut, summary="Promote a challenger that wins online")
async def decide(lab: ExperimentsDep, settings: SettingsDep, experiment_id: ExperimentId) -> DecisionOut:
    """Promotes the challenger whose CTR beats the control's with 95% confidence (two-proportion z-test),
    given enough impressions and no sample-ratio mismatch; otherwise says why not and keeps running."""
    try:
        return await lab.decide(experiment_id, settings.min_experiment_impressions)
    except ExperimentError as exc:
        _fail(exc)
