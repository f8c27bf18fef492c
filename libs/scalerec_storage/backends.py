"""Open (and close) the backends a service uses, from its settings, with topics and tables in place.

Every service's lifespan does the same dance — build from URLs, start, create
missing topics and tables — so it lives here once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from scalerec_adapters.bus import EventBus
from scalerec_adapters.cache import Cache
from scalerec_adapters.factory import make_bus, make_cache, make_store
from scalerec_adapters.store import StoreUnavailable, WideColumnStore
from scalerec_core.settings import ServiceSettings

from scalerec_storage.schema import tables

log = logging.getLogger(__name__)

# How long a starting service waits for its store (an HBase that is itself starting, or slow to
# create tables under load, answers with timeouts): long enough to ride that out, then it fails.
STORE_STARTUP_WAIT_S = 180.0


async def _ensure_tables(store: WideColumnStore) -> None:
    deadline = time.monotonic() + STORE_STARTUP_WAIT_S
    delay = 1.0
    while True:
        try:
            await asyncio.to_thread(store.ensure_tables, tables())
            return
        except StoreUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("store not ready at start-up (%s); creating the tables again in %.0fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(10.0, delay * 2)


@dataclass
class Backends:
    bus: EventBus
    store: WideColumnStore
    cache: Cache | None = None

    @classmethod
    async def open(cls, settings: ServiceSettings, client_id: str, *, cache: bool = False) -> Backends:
        bus = make_bus(
            settings.resolved_bus_url(),
            partitions=settings.topic_partitions,
            client_id=client_id,
            kafka_options=settings.kafka_client_options(),
        )
        store = make_store(settings.resolved_store_url(), namespace=settings.deployment)
        await bus.start()
        await bus.ensure_topics(settings.topics())
        await _ensure_tables(store)
        return cls(bus, store, make_cache(settings.cache_url) if cache else None)

    async def store_healthy(self) -> bool:
        return bool(await asyncio.to_thread(self.store.healthy))

    async def close(self) -> None:
        await self.bus.close()
        self.store.close()
        if self.cache is not None:
            self.cache.close()
