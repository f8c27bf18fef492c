"""Preprocessor app: three bus consumers (events, items, erasure) and a small status API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from scalerec_adapters.cache import CacheKeys
from scalerec_adapters.worker import ConsumerWorker
from scalerec_core.http import create_service_app
from scalerec_core.service import bootstrap, long_lived_heap
from scalerec_events.topics import Topic
from scalerec_storage.backends import Backends

from scalerec_preprocessor.api.routes import status
from scalerec_preprocessor.config import PreprocessorSettings, get_settings
from scalerec_preprocessor.consumers.erasure import ErasureConsumer
from scalerec_preprocessor.consumers.events import BATCH_GC_THRESHOLD, EventsConsumer
from scalerec_preprocessor.consumers.items import ItemsConsumer
from scalerec_preprocessor.deps import Consumers


def create_app(settings: PreprocessorSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bootstrap(settings)
        backends = await Backends.open(settings, "preprocessor", cache=True)
        bus, store, cache = backends.bus, backends.store, backends.cache
        assert cache is not None
        keys = CacheKeys(settings.deployment)
        events = EventsConsumer(
            store,
            cache,
            keys,
            bus.producer(),
            settings.history_len,
            settings.user_cache_ttl_seconds,
            examples_topic=settings.topic(Topic.EXAMPLES),
            memo_entries=settings.timeline_memo_entries,
        )
        items = ItemsConsumer(store)
        erasure = ErasureConsumer(store, cache, keys)
        workers = {
            "items": ConsumerWorker(
                bus,
                [settings.topic(Topic.ITEMS)],
                settings.stream_group("items"),
                items.handle,
                max_records=settings.poll_max_records,
                max_retries=settings.max_retries,
                name="items",
            ),
            "events": ConsumerWorker(
                bus,
                [settings.topic(Topic.EVENTS_RAW)],
                settings.stream_group("events"),
                events.handle,
                max_records=settings.poll_max_records,
                max_retries=settings.max_retries,
                name="events",
            ),
            "erasure": ConsumerWorker(
                bus,
                [settings.topic(Topic.ERASURE)],
                settings.stream_group("erasure"),
                erasure.handle,
                max_retries=settings.max_retries,
                name="erasure",
            ),
        }
        app.state.backends, app.state.store, app.state.cache, app.state.keys = backends, store, cache, keys
        app.state.workers = workers
        app.state.consumers = Consumers(events=events, items=items, erasure=erasure)
        try:
            # Frozen before the workers start: what start-up built, not a first batch in flight.
            with long_lived_heap(young_threshold=BATCH_GC_THRESHOLD):
                for worker in workers.values():
                    worker.start()
                yield
        finally:
            for worker in workers.values():
                await worker.stop()
            await backends.close()

    async def consuming() -> bool:
        return all(w.running and not w.failing for w in app.state.workers.values())

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
