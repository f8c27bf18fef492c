"""Evaluator app: judges every candidate offline, promotes better ones, measures variants online."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from scalerec_adapters.worker import ConsumerWorker
from scalerec_core.http import create_service_app
from scalerec_core.service import bootstrap
from scalerec_events.topics import Topic
from scalerec_storage.backends import Backends

from scalerec_evaluator.api.routes import experiments, reports
from scalerec_evaluator.config import EvaluatorSettings, get_settings
from scalerec_evaluator.consumers.candidates import CandidatesConsumer
from scalerec_evaluator.consumers.online import OnlineRecorder
from scalerec_evaluator.experiments import Experiments
from scalerec_evaluator.service import Evaluator
from scalerec_evaluator.serving import ServingController

log = logging.getLogger(__name__)


async def _repair_forever(controller: ServingController, interval_s: float) -> None:
    """Every replica of Triton serving what it must, however it came back (or came)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await controller.repair()
        except Exception:
            log.exception("triton: repairing the served versions failed; trying again in %.0f s", interval_s)


def create_app(settings: EvaluatorSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bootstrap(settings)
        backends = await Backends.open(settings, "evaluator")
        bus, store = backends.bus, backends.store
        settings.model_repository.mkdir(parents=True, exist_ok=True)
        producer = bus.producer()
        controller = ServingController(
            settings.model_repository,
            lambda: lab.needed_versions(),
            triton_url=settings.triton_url,
            unload_grace_s=settings.unload_grace_s,
        )
        evaluator = Evaluator(
            settings, store, producer, controller, lambda: e.experiment_id if (e := lab.running()) else None
        )
        lab = Experiments(settings, store, producer, evaluator)
        online = OnlineRecorder(store, impressions_topic=settings.topic(Topic.IMPRESSIONS))
        workers = [
            ConsumerWorker(
                bus,
                [settings.topic(Topic.MODELS_CANDIDATE)],
                settings.group(settings.consumer_group),
                CandidatesConsumer(evaluator).handle,
                max_records=10,
                name="candidates",
            ),
            ConsumerWorker(
                bus,
                [settings.topic(Topic.IMPRESSIONS), settings.topic(Topic.EVENTS_RAW)],
                settings.group(f"{settings.consumer_group}.online"),
                online.handle,
                max_records=2000,
                name="online",
            ),
        ]
        for w in workers:
            w.start()
        app.state.evaluator, app.state.experiments, app.state.backends = evaluator, lab, backends
        # What serves is reconciled with what is needed (a Triton restarted meanwhile starts empty).
        try:
            await controller.reconcile()
        except Exception as exc:
            log.warning("could not bring served versions in line at start (%s); the next change retries", exc)
        repairs = (
            asyncio.create_task(_repair_forever(controller, settings.triton_repair_s))
            if settings.triton_url and settings.triton_repair_s > 0
            else None
        )
        try:
            await evaluator.finish_promotion()  # a champion this process made but had not announced when it stopped
        except Exception as exc:
            log.warning("could not announce an unannounced champion at start (%s); the next promotion retries", exc)
        evaluator.rejudge_held_soon()  # held under an experiment that ended while this process was down
        try:
            yield
        finally:
            await evaluator.close()
            if repairs is not None:
                repairs.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await repairs
            for w in workers:
                await w.stop()
            await controller.close()
            await backends.close()

    async def store_ok() -> bool:
        return await app.state.backends.store_healthy()

    app = create_service_app(
        settings,
        service="evaluator",
        description="Offline metrics per model version, champion/challenger gate, online metrics per variant.",
        lifespan=lifespan,
        readiness={"store": store_ok},
    )
    app.include_router(reports.router)
    app.include_router(experiments.router)
    return app
