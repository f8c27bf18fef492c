"""Typed accessors for what the lifespan put on app.state (used with Depends).

Async so that FastAPI calls them on the event loop instead of hopping to a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from scalerec_adapters.store import WideColumnStore
from scalerec_adapters.worker import ConsumerWorker

from scalerec_preprocessor.consumers.erasure import ErasureConsumer
from scalerec_preprocessor.consumers.events import EventsConsumer
from scalerec_preprocessor.consumers.items import ItemsConsumer


@dataclass(frozen=True)
class Consumers:
    """The three bus consumers, for their counters in /v1/stats."""

    events: EventsConsumer
    items: ItemsConsumer
    erasure: ErasureConsumer


async def _workers(request: Request) -> dict[str, ConsumerWorker]:
    return request.app.state.workers


async def _consumers(request: Request) -> Consumers:
    return request.app.state.consumers


async def _store(request: Request) -> WideColumnStore:
    return request.app.state.store


WorkersDep = Annotated[dict[str, ConsumerWorker], Depends(_workers)]
ConsumersDep = Annotated[Consumers, Depends(_consumers)]
StoreDep = Annotated[WideColumnStore, Depends(_store)]
