"""<DEPLOYMENT>.items.upsert.v1 → the catalogue and the fresh-items index."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from scalerec_adapters.bus import Message
from scalerec_adapters.store import WideColumnStore
from scalerec_adapters.worker import BatchResult, parse_batch
from scalerec_events.models import Item
from scalerec_storage import records as r
from scalerec_storage import schema as s


class ItemsConsumer:
    def __init__(self, store: WideColumnStore) -> None:
        self.store = store
        self.stored = 0

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        parsed, result = parse_batch(messages, Item, "item")
        items = {item.item_id: item for _, item in parsed}  # the last version in the batch wins
        if items:
            await asyncio.to_thread(self._write, list(items.values()))
            self.stored += len(items)
        return result

    def _write(self, items: list[Item]) -> None:
        now_ms = int(time.time() * 1000)
        self.store.put_many(s.CATALOGUE, [(s.item_key(i.item_id), r.catalogue_cells(i)) for i in items])
        fresh = []
        for item in items:
            created = int(item.created_at.timestamp() * 1000) if item.created_at else now_ms
            if item.available:
                fresh.append((s.fresh_key(created, item.item_id), {b"d:id": item.item_id.encode()}))
        self.store.put_many(s.FRESH_ITEMS, fresh)
