"""Trainer app: trains on demand (POST /v1/train) and after N new examples; writes Triton model versions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from scalerec_adapters.worker import ConsumerWorker
from scalerec_core.http import create_service_app
from scalerec_core.service import bootstrap
from scalerec_events.topics import Topic
from scalerec_models.version_counter import counter_from_setting
from scalerec_storage.backends import Backends

from scalerec_trainer.api.routes import train
from scalerec_trainer.config import TrainerSettings, get_settings
from scalerec_trainer.consumers.examples import ExamplesConsumer
from scalerec_trainer.jobs import Trainer
from scalerec_trainer.pipeline import omp_wait_policy


def create_app(settings: TrainerSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bootstrap(settings)
        counter_from_setting(settings.model_version_counter)  # outside a pod, or without a token: stop here
        omp_wait_policy(settings)  # before torch loads for the first training, on the main thread
        backends = await Backends.open(settings, "trainer")
        bus, store = backends.bus, backends.store
        settings.model_repository.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(settings, store, bus.producer())
        examples = ExamplesConsumer(trainer, settings.train_after_examples)
        worker = ConsumerWorker(
            bus,
            [settings.topic(Topic.EXAMPLES)],
            settings.group(settings.consumer_group),
            examples.handle,
            max_records=2000,
            name="examples",
        )
        worker.start()
        app.state.trainer, app.state.backends, app.state.worker = trainer, backends, worker
        try:
            yield
        finally:
            await worker.stop()
            await trainer.close()
            await backends.close()

    async def store_ok() -> bool:
        return await app.state.backends.store_healthy()

    app = create_service_app(
        settings,
        service="trainer",
        description="Trains retrieval and ranking models, exports ONNX, writes Triton model versions.",
        lifespan=lifespan,
        readiness={"store": store_ok},
    )
    app.include_router(train.router)
    return app
