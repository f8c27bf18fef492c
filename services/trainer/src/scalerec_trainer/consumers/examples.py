"""<DEPLOYMENT>.training.examples.v1 → counts new examples and triggers training after TRAIN_AFTER_EXAMPLES."""

from __future__ import annotations

from collections.abc import Sequence

from scalerec_adapters.bus import Message
from scalerec_adapters.worker import BatchResult

from scalerec_trainer.jobs import Trainer


class ExamplesConsumer:
    def __init__(self, trainer: Trainer, train_after: int) -> None:
        self.trainer = trainer
        self.train_after = train_after
        self.seen = 0
        self.since_last_train = 0

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        self.seen += len(messages)
        self.since_last_train += len(messages)
        if self.train_after and self.since_last_train >= self.train_after:
            _, started = self.trainer.submit(reason=f"{self.since_last_train} new examples")
            if started:
                self.since_last_train = 0
        return BatchResult()
