"""Open (and close) the backends a service uses, from its settings, with topics and tables in place.

Every service's lifespan does the same dance — build from URLs, start, create
missing topics and tables — so it lives here once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from scalerec_adapters.bus import EventBus
from scalerec_adapters.cache import Cache
from scalerec_adapters.factory import make_bus, make_cache, make_store
from scalerec_adapters.store import WideColumnStore
from scalerec_core.settings import ServiceSettings
from scalerec_events.topics import all_topics

from scalerec_storage.schema import tables


@dataclass
class Backends:
    bus: EventBus
    store: WideColumnStore
    cache: Cache | None = None

    @classmethod
    async def open(cls, settings: ServiceSettings, client_id: str, *, cache: bool = False) -> Backends:
        bus = make_bus(settings.resolved_bus_url(), partitions=settings.topic_partitions, client_id=client_id)
        store = make_store(settings.resolved_store_url(), namespace=settings.deployment)
        await bus.start()
        await bus.ensure_topics(all_topics(settings.topic_partitions))
        await asyncio.to_thread(store.ensure_tables, tables())
        return cls(bus, store, make_cache(settings.cache_url) if cache else None)

    async def store_healthy(self) -> bool:
        return bool(await asyncio.to_thread(self.store.healthy))

    async def close(self) -> None:
        await self.bus.close()
        self.store.close()
        if self.cache is not None:
            self.cache.close()
