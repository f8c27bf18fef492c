"""``python -m scalerec_trainer.train``: one training run, then exit (the Kubernetes Job/CronJob entry point).

Same settings and same pipeline as the service's ``POST /v1/train``; the new
version is announced on ``<DEPLOYMENT>.models.candidate.v1`` for the evaluator.
Under ``torchrun --nproc_per_node=N`` every rank trains its shard (DistributedDataParallel,
gloo on CPU, nccl on GPU); only rank 0 writes the version and announces it, the others exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from scalerec_adapters.factory import make_bus, make_store
from scalerec_core.service import bootstrap
from scalerec_storage.schema import tables

from scalerec_trainer.config import TrainerSettings, get_settings
from scalerec_trainer.pipeline import NotEnoughData, announce_candidate, torch_threads, train_version

log = logging.getLogger("scalerec_trainer.train")


async def run_once() -> int:
    settings = get_settings()
    bootstrap(settings)
    # torchrun sets WORLD_SIZE > 1: join the process group (gloo on CPU, nccl on GPU); torch loads only then.
    distributed = env_world_size() > 1
    torch_threads(settings)  # before torch loads below: the OpenMP wait policy is read then
    if distributed:
        from scalerec_models import distributed as dd

        dd.init_from_env(settings.train_device)
    try:
        return await _run(settings, distributed)
    finally:
        if distributed:
            dd.shutdown()


async def _run(settings: TrainerSettings, distributed: bool) -> int:
    rank = int(os.environ.get("RANK", "0"))
    store = make_store(settings.resolved_store_url(), namespace=settings.deployment)
    if rank != 0:
        # Other ranks train their shard of every epoch and exit; rank 0 writes and announces.
        try:
            await asyncio.to_thread(_barrier, distributed)  # rank 0 has created the tables
            await asyncio.to_thread(train_version, settings, store)
        except NotEnoughData as exc:
            log.info("rank %d: nothing to do: %s", rank, exc)
        finally:
            store.close()
        return 0
    bus = make_bus(
        settings.resolved_bus_url(),
        partitions=settings.topic_partitions,
        client_id="trainer-job",
        kafka_options=settings.kafka_client_options(),
    )
    await bus.start()
    try:
        await bus.ensure_topics(settings.topics())
        await asyncio.to_thread(store.ensure_tables, tables())
        await asyncio.to_thread(_barrier, distributed)
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


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _barrier(distributed: bool) -> None:
    if distributed:
        import torch.distributed as dist

        dist.barrier()


def main() -> None:
    sys.exit(asyncio.run(run_once()))


if __name__ == "__main__":
    main()
