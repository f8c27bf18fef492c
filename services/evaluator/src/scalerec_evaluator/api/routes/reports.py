"""GET /v1/reports, GET /v1/reports/{version}, POST /v1/evaluate/{version}, GET /v1/online."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path
from scalerec_core.auth import Scope, require
from scalerec_core.http import Digits, StrictQueryRoute, field_error
from scalerec_models import repository as repo

from scalerec_evaluator.deps import EvaluatorDep, SettingsDep
from scalerec_evaluator.results import online_by_version
from scalerec_evaluator.schemas import EvaluationReport, OnlineOut, ReportsOut

router = APIRouter(prefix="/v1", tags=["evaluation"], dependencies=[require(Scope.ADMIN)], route_class=StrictQueryRoute)


@router.get("/reports", summary="Every evaluated model version, oldest first")
async def reports(evaluator: EvaluatorDep) -> ReportsOut:
    items = await asyncio.to_thread(evaluator.reports)
    return ReportsOut(champion=evaluator.champion(), reports=items)


# A version as a path gives it: digits only.
Version = Annotated[int, Digits, Path(ge=1, le=2**31 - 1)]


@router.get("/reports/{version}", summary="The evaluation report of one model version")
async def report(evaluator: EvaluatorDep, version: Version) -> EvaluationReport:
    found = await asyncio.to_thread(evaluator.report, version)
    if found is None:
        raise field_error(404, "version", f"no report for model version {version} (not evaluated yet, or unknown)")
    return found


@router.post("/evaluate/{version}", summary="Evaluate (and maybe promote) a model version now")
async def evaluate(evaluator: EvaluatorDep, settings: SettingsDep, version: Version) -> EvaluationReport:
    if version not in repo.list_versions(settings.model_repository, repo.RANKER_MODEL):
        raise field_error(404, "version", f"model version {version} is not in the model repository")
    if version == evaluator.champion():
        # Judged against itself it only met the baselines, and its report (promoted) was overwritten, held
        # by a running experiment for good.
        raise field_error(
            409, "version", f"model version {version} is the champion: its report is GET /v1/reports/{version}"
        )
    return await evaluator.evaluate(version)


@router.get("/online", summary="Online metrics per model version (CTR, conversion rate), from the stored rows")
async def online(evaluator: EvaluatorDep) -> OnlineOut:
    window_ms = 3600 * 1000
    return OnlineOut(variants=await asyncio.to_thread(online_by_version, evaluator.store, window_ms))
