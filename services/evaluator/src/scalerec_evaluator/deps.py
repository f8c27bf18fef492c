"""Typed accessors for what the lifespan put on app.state (used with Depends).

Async so that FastAPI calls them on the event loop instead of hopping to a thread.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from scalerec_evaluator.config import EvaluatorSettings
from scalerec_evaluator.consumers.online import OnlineMetrics
from scalerec_evaluator.service import Evaluator


async def _settings(request: Request) -> EvaluatorSettings:
    return request.app.state.settings


async def _evaluator(request: Request) -> Evaluator:
    return request.app.state.evaluator


async def _online(request: Request) -> OnlineMetrics:
    return request.app.state.online


SettingsDep = Annotated[EvaluatorSettings, Depends(_settings)]
EvaluatorDep = Annotated[Evaluator, Depends(_evaluator)]
OnlineDep = Annotated[OnlineMetrics, Depends(_online)]
