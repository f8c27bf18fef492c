"""<DEPLOYMENT>.items.upsert.v1 → this process's catalogue and the served version's item table.

Every replica reads the topic in a group of its own (like model announcements), so a
price, title or availability change reaches every ranker without a restart; the
content features are hashed here once per change, never per request.
"""

from __future__ import annotations

from collections.abc import Sequence

from scalerec_adapters.bus import Message
from scalerec_adapters.worker import BatchResult, parse_batch
from scalerec_events.models import Item

from scalerec_ranker.items import ItemRow
from scalerec_ranker.models import ModelManager


class CatalogueConsumer:
    def __init__(self, models: ModelManager) -> None:
        self.models = models
        self.applied = 0

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        parsed, result = parse_batch(messages, Item, "item")
        latest: dict[str, ItemRow] = {}
        for _, item in parsed:  # the last version in the batch wins
            latest[item.item_id] = ItemRow.of(item)
        self.applied += self.models.apply_items(latest.values())
        return result
