"""``python -m scalerec_trainer.train``: one training run, then exit (the Kubernetes Job/CronJob entry point).

Same settings and same pipeline as the service's ``POST /v1/train``; the new
version is announced on ``scalerec.models.candidate.v1`` for the evaluator.
Under ``torchrun`` only rank 0 writes and announces.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from scalerec_adapters.factory import make_bus, make_store
from scalerec_core.service import bootstrap
from scalerec_events.topics import all_topics
from scalerec_storage.schema import tables

from scalerec_trainer.config import get_settings
from scalerec_trainer.pipeline import NotEnoughData, announce_candidate, train_version

log = logging.getLogger("scalerec_trainer.train")


async def run_once() -> int:
    settings = get_settings()
    bootstrap(settings)
    if int(os.environ.get("RANK", "0")) != 0:
        log.info("rank %s: data-parallel training is not wired yet; rank 0 trains alone", os.environ["RANK"])
        return 0
    store = make_store(settings.resolved_store_url(), namespace=settings.deployment)
    bus = make_bus(settings.resolved_bus_url(), partitions=settings.topic_partitions, client_id="trainer-job")
    await bus.start()
    try:
        await bus.ensure_topics(all_topics(settings.topic_partitions))
        await asyncio.to_thread(store.ensure_tables, tables())
        try:
            outcome = await asyncio.to_thread(train_version, settings, store)
        except NotEnoughData as exc:
            log.warning("nothing to do: %s", exc)
            return 0
        await announce_candidate(bus.producer(), settings, outcome)
        log.info("model version %d written and announced", outcome.version)
        return 0
    finally:
        await bus.close()
        store.close()


def main() -> None:
    sys.exit(asyncio.run(run_once()))


if __name__ == "__main__":
    main()
