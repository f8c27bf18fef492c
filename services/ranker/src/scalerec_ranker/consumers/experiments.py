"""<DEPLOYMENT>.experiments.state.v1 → route users by the model's running experiment.

Every replica reads the topic in a consumer group of its own from the beginning; it is compacted
and keyed by model, so a replica started later replays the newest state: the running experiment
(or none).  The evaluator is the topic's one writer.
"""

from __future__ import annotations

from collections.abc import Sequence

from scalerec_adapters.bus import Message
from scalerec_adapters.worker import BatchResult, parse_batch
from scalerec_events.experiments import Experiment
from scalerec_models import repository as repo

from scalerec_ranker.models import ModelManager


class ExperimentsConsumer:
    def __init__(self, models: ModelManager) -> None:
        self.models = models

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        parsed, result = parse_batch(messages, Experiment, "experiment")
        latest = [exp for _, exp in parsed if exp.model == repo.RANKER_MODEL]
        if latest:
            await self.models.follow_experiment(latest[-1])
        return result
