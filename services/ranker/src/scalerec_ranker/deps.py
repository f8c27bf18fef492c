"""What routes take from the lifespan's app.state, typed (``Annotated[..., Depends()]``).

Two on purpose: each dependency costs the request path a few microseconds, and the recommender
already holds the settings, the scorer and the model manager.
"""

from __future__ import annotations

from typing import Annotated

from scalerec_core.http import from_app_state

from scalerec_ranker.impressions import ImpressionPublisher
from scalerec_ranker.recommend import Recommender

RecommenderDep = Annotated[Recommender, from_app_state("recommender")]
ImpressionsDep = Annotated[ImpressionPublisher, from_app_state("impressions")]
