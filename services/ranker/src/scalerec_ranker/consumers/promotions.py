"""<DEPLOYMENT>.models.promoted.v1 → hot swap to the promoted version.

Every replica reads announcements in a consumer group of its own, so each one swaps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from scalerec_adapters.bus import Message
from scalerec_adapters.worker import BatchResult, parse_batch
from scalerec_events.models import ModelAnnouncement
from scalerec_models import repository as repo

from scalerec_ranker.models import ModelManager

log = logging.getLogger(__name__)


class PromotionsConsumer:
    def __init__(self, models: ModelManager) -> None:
        self.models = models

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        parsed, result = parse_batch(messages, ModelAnnouncement, "announcement")
        latest: ModelAnnouncement | None = None
        for _, ann in parsed:
            if ann.model == repo.RANKER_MODEL and (latest is None or ann.version > latest.version):
                latest = ann
        if latest is not None and (self.models.current is None or latest.version != self.models.current.version):
            await self.models.activate(latest.version)
        return result
