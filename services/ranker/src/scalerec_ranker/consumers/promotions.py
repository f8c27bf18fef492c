"""<DEPLOYMENT>.models.promoted.v1 → hot swap to the champion.

Every replica reads announcements in a consumer group of its own, so each one swaps.  The topic
is compacted and keyed by model: its newest message is the champion (the evaluator is its one
writer), so a replica started later ends on the champion — not on the highest version it
replays, which a rollback may have replaced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from scalerec_adapters.bus import Message
from scalerec_adapters.worker import BatchResult, RetryLater, parse_batch
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
            if ann.model == repo.RANKER_MODEL:
                latest = ann  # the newest wins, whatever its number
        if latest is not None and (self.models.current is None or latest.version != self.models.current.version):
            repository = self.models.repository
            if await asyncio.to_thread(
                repo.still_arriving, repository, repo.RANKER_MODEL, latest.version, latest.created_at
            ):
                # A mirror of object storage that has not copied it yet: asked again later, the old one serving.
                raise RetryLater(f"version {latest.version} is not in {repository} yet")
            await self.models.activate(latest.version)
        return result
