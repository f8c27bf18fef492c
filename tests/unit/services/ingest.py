"""Fill an embedded store the way the preprocessor does, without running the services (shared test helper)."""

from __future__ import annotations

from pathlib import Path

from scalerec_adapters.bus import Message
from scalerec_adapters.cache import CacheKeys
from scalerec_adapters.embedded.memory_cache import MemoryCache
from scalerec_adapters.embedded.sqlite_bus import SqliteEventBus
from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_events.topics import Topic, topic_name
from scalerec_preprocessor.consumers.events import EventsConsumer
from scalerec_preprocessor.consumers.items import ItemsConsumer
from scalerec_storage import schema as s
from scalerec_synthetic import Shop


async def ingest_shop(data_dir: Path, shop: Shop) -> None:
    """Catalogue and events through the real preprocessor consumers into ``data_dir``'s bus and store."""
    bus = SqliteEventBus(data_dir / "bus.db")
    await bus.start()
    store = SqliteStore(data_dir / "store.db")
    store.ensure_tables(s.tables())
    items = [
        Message(topic_name(Topic.ITEMS), 0, n, None, i.model_dump_json().encode()) for n, i in enumerate(shop.items)
    ]
    await ItemsConsumer(store).handle(items)
    events = EventsConsumer(
        store, MemoryCache(), CacheKeys("scalerec"), bus.producer(), 50, 60, examples_topic=topic_name(Topic.EXAMPLES)
    )
    msgs = [
        Message(topic_name(Topic.EVENTS_RAW), 0, n, None, e.model_dump_json().encode())
        for n, e in enumerate(shop.events)
    ]
    for i in range(0, len(msgs), 2000):
        await events.handle(msgs[i : i + 2000])
    store.close()
    await bus.close()


def trained_shop(data_dir: Path, seed: int) -> tuple[Path, Shop]:
    """A small synthetic shop (200 users, 120 items) ingested into ``data_dir`` and version 1 trained on it
    (two epochs): the real trainer's files in ``data_dir/model_repository``, for tests of what serves them."""
    import asyncio

    from scalerec_synthetic import ShopConfig, generate_shop
    from scalerec_trainer.config import TrainerSettings
    from scalerec_trainer.pipeline import train_version

    shop = generate_shop(ShopConfig(users=200, items=120, events_per_user=20, seed=seed))
    asyncio.run(ingest_shop(data_dir, shop))
    repository = data_dir / "model_repository"
    settings = TrainerSettings(
        data_dir=data_dir, model_repository=repository, min_examples=10, max_epochs=2, time_budget_s=10
    )
    store = SqliteStore(data_dir / "store.db")
    try:
        assert train_version(settings, store).version == 1
    finally:
        store.close()
    return repository, shop
