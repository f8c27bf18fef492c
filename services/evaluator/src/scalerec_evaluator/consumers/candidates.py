"""<DEPLOYMENT>.models.candidate.v1 → evaluate every candidate (and promote the better ones)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from scalerec_adapters.bus import Message
from scalerec_adapters.worker import BatchResult, RetryLater, parse_batch
from scalerec_events.models import ModelAnnouncement
from scalerec_models import repository as repo

from scalerec_evaluator.service import Evaluator

log = logging.getLogger(__name__)


class CandidatesConsumer:
    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        parsed, result = parse_batch(messages, ModelAnnouncement, "announcement")
        repository = self.evaluator.settings.model_repository
        for message, ann in parsed:
            if self.evaluator.report(ann.version) is not None:
                continue  # re-delivered: already judged
            if await asyncio.to_thread(repo.still_arriving, repository, repo.RANKER_MODEL, ann.version, ann.created_at):
                # A mirror of object storage that has not copied it yet: the batch again later (judged
                # versions are skipped above), not a dead letter.
                raise RetryLater(f"version {ann.version} is not in {repository} yet")
            try:
                await self.evaluator.evaluate(ann.version)
            except (FileNotFoundError, ValueError) as exc:
                result.poison.append((message, f"cannot evaluate version {ann.version}: {exc}"))
        return result
