"""Collector app: validates events, items and erasure requests at the edge and puts them on the bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from scalerec_adapters.factory import make_bus
from scalerec_core.http import create_service_app
from scalerec_core.service import bootstrap

from scalerec_collector.api.routes import events, items, users
from scalerec_collector.config import CollectorSettings, get_settings
from scalerec_collector.dedupe import RecentIds


def create_app(settings: CollectorSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bootstrap(settings)
        bus = make_bus(
            settings.resolved_bus_url(),
            partitions=settings.topic_partitions,
            client_id="collector",
            kafka_options=settings.kafka_client_options(),
        )
        await bus.start()
        await bus.ensure_topics(settings.topics())
        app.state.bus = bus
        app.state.producer = bus.producer()
        app.state.recent_ids = RecentIds(settings.dedupe_window)
        try:
            yield
        finally:
            await bus.close()

    async def bus_ready() -> bool:
        return bool(await app.state.bus.healthy())

    app = create_service_app(
        settings,
        service="collector",
        description="Accepts events, items and erasure requests; every accepted message is durable on the bus.",
        lifespan=lifespan,
        max_body_bytes=settings.max_body_bytes,
        readiness={"bus": bus_ready},
    )
    app.include_router(events.router)
    app.include_router(items.router)
    app.include_router(users.router)
    return app
