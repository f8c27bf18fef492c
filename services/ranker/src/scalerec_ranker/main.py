"""Ranker app: serves recommendations, swaps to promoted models, publishes impressions."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from scalerec_adapters.cache import CacheKeys
from scalerec_adapters.factory import make_scorer
from scalerec_adapters.scoring import Scorer
from scalerec_adapters.worker import ConsumerWorker
from scalerec_core.http import create_service_app
from scalerec_core.service import bootstrap, long_lived_heap
from scalerec_events.topics import Topic
from scalerec_models import repository as repo
from scalerec_storage.backends import Backends

from scalerec_ranker.api.routes import recommendations
from scalerec_ranker.baselines import Baselines
from scalerec_ranker.config import RankerSettings, get_settings
from scalerec_ranker.consumers.erasure import ErasureConsumer
from scalerec_ranker.consumers.experiments import ExperimentsConsumer
from scalerec_ranker.consumers.items import CatalogueConsumer
from scalerec_ranker.consumers.promotions import PromotionsConsumer
from scalerec_ranker.impressions import ImpressionPublisher
from scalerec_ranker.models import ModelManager
from scalerec_ranker.recommend import Recommender

log = logging.getLogger(__name__)


def build_scorer(settings: RankerSettings) -> Scorer:
    """Triton first when configured, in-process onnxruntime behind it; the baseline is the last resort.

    On Triton the ranker is a follower (``control=false``): the evaluator alone loads and unloads
    versions there, and a version it has not loaded yet is scored in process meanwhile.
    """
    if settings.scorer_url.startswith("onnxruntime"):
        return make_scorer(settings.scorer_url, repository=settings.model_repository)
    local = make_scorer("onnxruntime://?inline=1", repository=settings.model_repository)
    from scalerec_adapters.triton_scorer import FallbackScorer

    url = settings.scorer_url
    if "timeout=" not in url:
        # Triton gives up with half the scoring time left, so a slow or black-holed Triton counts
        # against its breaker and the in-process fallback still scores within the request's budget.
        url += ("&" if "?" in url else "?") + f"timeout={settings.scoring_timeout_ms / 2000:g}"
    triton = make_scorer(url, repository=settings.model_repository, control="false")
    return FallbackScorer(triton, local)


def create_app(settings: RankerSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bootstrap(settings)
        backends = await Backends.open(settings, "ranker", cache=True)
        bus, store, cache = backends.bus, backends.store, backends.cache
        assert cache is not None
        scorer = build_scorer(settings)
        models = ModelManager(
            scorer,
            settings.model_repository,
            max_candidates=settings.max_candidates,
            candidate_vectors_max_bytes=settings.candidate_vectors_max_mb << 20,
        )
        try:
            n = await models.load_catalogue(store)
            log.info("catalogue: %d items", n)
        except Exception as exc:
            log.warning("catalogue not readable at start (%s); the items topic fills it", exc)
        champion = repo.read_champion(settings.model_repository, repo.RANKER_MODEL)
        if champion is not None:
            await models.activate(champion)
        baselines = Baselines(store, settings.baseline_refresh_seconds)
        try:
            await asyncio.to_thread(baselines.refresh)
        except Exception as exc:
            log.warning("baselines not available at start (%s); they refresh in the background", exc)
        baselines.start()
        group = settings.group(f"{settings.consumer_group_prefix}-{uuid.uuid4().hex[:8]}")
        promotions = ConsumerWorker(
            bus, [settings.topic(Topic.MODELS_PROMOTED)], group, PromotionsConsumer(models).handle, name="promotions"
        )
        promotions.start()
        experiments = ConsumerWorker(
            bus, [settings.topic(Topic.EXPERIMENTS)], group, ExperimentsConsumer(models).handle, name="experiments"
        )
        experiments.start()
        catalogue = ConsumerWorker(
            bus,
            [settings.topic(Topic.ITEMS)],
            group,
            CatalogueConsumer(models).handle,
            name="catalogue",
            max_records=2000,
        )
        catalogue.start()
        erasures = app.state.erasures = ConsumerWorker(
            bus,
            [settings.topic(Topic.ERASURE)],
            group,
            ErasureConsumer(store, cache, CacheKeys(settings.deployment)).handle,
            name="erasure",
        )
        erasures.start()
        app.state.store, app.state.cache, app.state.scorer, app.state.models = store, cache, scorer, models
        app.state.producer = bus.producer()
        impressions = ImpressionPublisher(app.state.producer, settings.topic(Topic.IMPRESSIONS))
        impressions.start()
        app.state.recommender = Recommender(settings, store, cache, scorer, models, baselines, impressions)
        # What start-up built (the model's tables, the catalogue, the baselines) lives as long as the
        # process: out of the cyclic collector's way, so a full collection scans only what requests made.
        try:
            with long_lived_heap():
                yield
        finally:
            app.state.recommender.close()
            await impressions.stop()
            await promotions.stop()
            await experiments.stop()
            await catalogue.stop()
            await erasures.stop()
            await baselines.stop()
            await models.close()
            await scorer.close()
            await backends.close()

    async def scorer_ok() -> bool:
        return bool(await app.state.scorer.healthy())

    # Readiness does not wait for a model: without one the ranker still serves the flagged baseline.
    app = create_service_app(
        settings,
        service="ranker",
        description="Recommendations: candidates, features, scoring, re-ranking, explanations.",
        lifespan=lifespan,
        max_body_bytes=settings.max_body_bytes,
        readiness={"scorer": scorer_ok},
    )
    app.include_router(recommendations.router)
    return app
