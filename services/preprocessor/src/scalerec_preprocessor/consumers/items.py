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

# The creation time an item's fresh-index row is keyed by (first seen, unless the item says when it was created).
FRESH_MS = b"d:fresh_ms"


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
        """The catalogue rows, and one fresh-index row per available item, keyed by when it was created.

        An item without ``created_at`` is fresh from when it was first seen (``d:fresh_ms`` in its catalogue
        row), not from each update: every upsert used to add a row "created now", so a nightly catalogue sync
        made every item fresh and the index filled with copies. The row of an item that became unavailable,
        or whose creation time changed, is deleted. The catalogue is written last: it holds the pointer a
        re-delivery starts from.
        """
        now_ms = int(time.time() * 1000)
        keys = {s.item_key(i.item_id): i.item_id for i in items}
        stored = self.store.get_many(s.CATALOGUE, list(keys), columns=[FRESH_MS])
        before = {keys[k]: int(c[FRESH_MS]) for k, c in stored.items() if FRESH_MS in c and k in keys}
        fresh, stale, catalogue = [], [], []
        for item in items:
            seen = before.get(item.item_id)
            created = int(item.created_at.timestamp() * 1000) if item.created_at else (seen if seen else now_ms)
            if seen is not None and (seen != created or not item.available):
                stale.append(s.fresh_key(seen, item.item_id))
            if item.available:
                fresh.append((s.fresh_key(created, item.item_id), {b"d:id": item.item_id.encode()}))
            catalogue.append((s.item_key(item.item_id), {**r.catalogue_cells(item), FRESH_MS: str(created).encode()}))
        self.store.put_many(s.FRESH_ITEMS, fresh)
        self.store.delete_many(s.FRESH_ITEMS, stale)
        self.store.put_many(s.CATALOGUE, catalogue)
