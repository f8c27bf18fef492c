"""What routes take from the lifespan's app.state, typed (``Annotated[..., Depends()]``)."""

from __future__ import annotations

from typing import Annotated

from scalerec_adapters.scoring import Scorer
from scalerec_core.http import from_app_state

from scalerec_ranker.config import RankerSettings
from scalerec_ranker.impressions import ImpressionPublisher
from scalerec_ranker.models import ModelManager
from scalerec_ranker.recommend import Recommender

SettingsDep = Annotated[RankerSettings, from_app_state("settings")]
RecommenderDep = Annotated[Recommender, from_app_state("recommender")]
ImpressionsDep = Annotated[ImpressionPublisher, from_app_state("impressions")]
ModelsDep = Annotated[ModelManager, from_app_state("models")]
ScorerDep = Annotated[Scorer, from_app_state("scorer")]
