"""<DEPLOYMENT>.models.candidate.v1 → evaluate every candidate (and promote the better ones)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from scalerec_adapters.bus import Message
from scalerec_adapters.worker import BatchResult, parse_batch
from scalerec_events.models import ModelAnnouncement

from scalerec_evaluator.service import Evaluator

log = logging.getLogger(__name__)


class CandidatesConsumer:
    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        parsed, result = parse_batch(messages, ModelAnnouncement, "announcement")
        for message, ann in parsed:
            if self.evaluator.report(ann.version) is not None:
                continue  # re-delivered: already judged
            try:
                await self.evaluator.evaluate(ann.version)
            except (FileNotFoundError, ValueError) as exc:
                result.poison.append((message, f"cannot evaluate version {ann.version}: {exc}"))
        return result
