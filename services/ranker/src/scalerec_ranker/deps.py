"""Typed accessors for what the lifespan put on app.state (used with Depends).

Async so that FastAPI calls them on the event loop: a sync provider would cost a thread hop on
every recommendation request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from scalerec_adapters.scoring import Scorer

from scalerec_ranker.config import RankerSettings
from scalerec_ranker.impressions import ImpressionPublisher
from scalerec_ranker.models import ModelManager
from scalerec_ranker.recommend import Recommender


async def _settings(request: Request) -> RankerSettings:
    return request.app.state.settings


async def _recommender(request: Request) -> Recommender:
    return request.app.state.recommender


async def _impressions(request: Request) -> ImpressionPublisher:
    return request.app.state.impressions


async def _models(request: Request) -> ModelManager:
    return request.app.state.models


async def _scorer(request: Request) -> Scorer:
    return request.app.state.scorer


SettingsDep = Annotated[RankerSettings, Depends(_settings)]
RecommenderDep = Annotated[Recommender, Depends(_recommender)]
ImpressionsDep = Annotated[ImpressionPublisher, Depends(_impressions)]
ModelsDep = Annotated[ModelManager, Depends(_models)]
ScorerDep = Annotated[Scorer, Depends(_scorer)]
