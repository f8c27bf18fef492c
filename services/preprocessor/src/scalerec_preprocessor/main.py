"""Preprocessor app: three bus consumers (events, items, erasure), in ``WORKERS`` processes, and a small status API."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from scalerec_core.http import create_service_app
from scalerec_core.service import available_cpus, bootstrap, long_lived_heap
from scalerec_storage.backends import Backends

from scalerec_preprocessor.api.routes import status
from scalerec_preprocessor.config import PreprocessorSettings, get_settings
from scalerec_preprocessor.consumers.events import BATCH_GC_THRESHOLD
from scalerec_preprocessor.pipeline import ChildPipelines, Pipeline

log = logging.getLogger(__name__)


def create_app(settings: PreprocessorSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bootstrap(settings)
        workers = settings.workers or available_cpus()
        if workers == 1:
            pipeline = await Pipeline.open(settings)
            app.state.backends, app.state.store = pipeline.backends, pipeline.backends.store
            app.state.pipeline = pipeline
            try:
                # Frozen before the workers start: what start-up built, not a first batch in flight.
                with long_lived_heap(young_threshold=BATCH_GC_THRESHOLD):
                    pipeline.start()
                    yield
            finally:
                await pipeline.stop()
            return
        # The consumers in child processes; this one answers the API (the store for histories, no consumer).
        backends = await Backends.open(settings, "preprocessor")
        children = ChildPipelines(settings, workers)
        app.state.backends, app.state.store, app.state.pipeline = backends, backends.store, children
        await children.start()
        log.info("consumers in %d processes (WORKERS=%d)", workers, workers)
        try:
            yield
        finally:
            await children.stop()
            await backends.close()

    async def consuming() -> bool:
        stats = await app.state.pipeline.stats(lag=False)  # a rebalancing broker must not make it unready
        return all(w["running"] and not w["failing"] for w in stats["workers"].values())

    async def store_ok() -> bool:
        return await app.state.backends.store_healthy()

    app = create_service_app(
        settings,
        service="preprocessor",
        description="Consumes raw events, items and erasure requests; keeps features and histories; emits examples.",
        lifespan=lifespan,
        readiness={"consumers": consuming, "store": store_ok},
    )
    app.include_router(status.router)
    return app
