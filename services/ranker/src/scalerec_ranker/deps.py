"""What routes take from the lifespan's app.state, typed (``Annotated[..., Depends()]``).

One on purpose: each dependency costs the request path microseconds, and the recommender already
holds the settings, the scorer, the model manager and the impression publisher.
"""

from __future__ import annotations

from typing import Annotated

from scalerec_core.http import from_app_state

from scalerec_ranker.recommend import Recommender

RecommenderDep = Annotated[Recommender, from_app_state("recommender")]
