"""Preprocessor app: three bus consumers (events, items, erasure) and a small status API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from scalerec_adapters.cache import CacheKeys
from scalerec_adapters.factory import make_bus, make_cache, make_store
from scalerec_adapters.worker import ConsumerWorker
from scalerec_core.http import install_common
from scalerec_core.service import bootstrap
from scalerec_events.topics import Topic, all_topics
from scalerec_storage.schema import tables

from scalerec_preprocessor.api.routes import status
from scalerec_preprocessor.config import PreprocessorSettings, get_settings
from scalerec_preprocessor.consumers.erasure import ErasureConsumer
from scalerec_preprocessor.consumers.events import EventsConsumer
from scalerec_preprocessor.consumers.items import ItemsConsumer


def create_app(settings: PreprocessorSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bootstrap(settings)
        bus = make_bus(settings.resolved_bus_url(), partitions=settings.topic_partitions, client_id="preprocessor")
        store = make_store(settings.resolved_store_url(), namespace=settings.deployment)
        cache = make_cache(settings.cache_url)
        await bus.start()
        await bus.ensure_topics(all_topics(settings.topic_partitions))
        await asyncio.to_thread(store.ensure_tables, tables())
        keys = CacheKeys(settings.deployment)
        events = EventsConsumer(
            store, cache, keys, bus.producer(), settings.history_len, settings.user_cache_ttl_seconds
        )
        items = ItemsConsumer(store)
        erasure = ErasureConsumer(store, cache, keys)
        group = settings.consumer_group
        workers = {
            "items": ConsumerWorker(
                bus, [Topic.ITEMS], f"{group}.items", items.handle, max_records=settings.poll_max_records, name="items"
            ),
            "events": ConsumerWorker(
                bus,
                [Topic.EVENTS_RAW],
                f"{group}.events",
                events.handle,
                max_records=settings.poll_max_records,
                name="events",
            ),
            "erasure": ConsumerWorker(bus, [Topic.ERASURE], f"{group}.erasure", erasure.handle, name="erasure"),
        }
        app.state.store, app.state.cache, app.state.keys = store, cache, keys
        app.state.workers = workers
        app.state.consumers = {"events": events, "items": items, "erasure": erasure}
        for worker in workers.values():
            worker.start()
        try:
            yield
        finally:
            for worker in workers.values():
                await worker.stop()
            await bus.close()
            store.close()
            cache.close()

    app = FastAPI(
        title="ScaleRec preprocessor",
        version="1.0.0",
        description="Consumes raw events, items and erasure requests; keeps features and histories; emits examples.",
        lifespan=lifespan,
    )
    app.state.settings = settings

    async def consuming() -> bool:
        return all(w.running and not w.failing for w in app.state.workers.values())

    async def store_ok() -> bool:
        return bool(await asyncio.to_thread(app.state.store.healthy))

    install_common(
        app,
        service="preprocessor",
        api_keys=settings.api_key_set(),
        readiness={"consumers": consuming, "store": store_ok},
    )
    app.include_router(status.router)
    return app
