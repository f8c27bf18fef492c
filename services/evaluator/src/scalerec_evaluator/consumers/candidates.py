"""scalerec.models.candidate.v1 → evaluate every candidate (and promote the better ones)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydantic import ValidationError
from scalerec_adapters.bus import Message
from scalerec_adapters.worker import BatchResult
from scalerec_events.models import ModelAnnouncement

from scalerec_evaluator.service import Evaluator

log = logging.getLogger(__name__)


class CandidatesConsumer:
    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        result = BatchResult()
        for message in messages:
            try:
                ann = ModelAnnouncement.model_validate_json(message.value)
            except ValidationError as exc:
                result.poison.append((message, f"invalid announcement: {exc}"))
                continue
            if self.evaluator.report(ann.version) is not None:
                continue  # re-delivered: already judged
            try:
                await self.evaluator.evaluate(ann.version)
            except (FileNotFoundError, ValueError) as exc:
                result.poison.append((message, f"cannot evaluate version {ann.version}: {exc}"))
        return result
