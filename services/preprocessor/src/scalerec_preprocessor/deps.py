"""What routes take from the lifespan's app.state, typed (``Annotated[..., Depends()]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from scalerec_adapters.store import WideColumnStore
from scalerec_adapters.worker import ConsumerWorker
from scalerec_core.http import from_app_state

from scalerec_preprocessor.consumers.erasure import ErasureConsumer
from scalerec_preprocessor.consumers.events import EventsConsumer
from scalerec_preprocessor.consumers.items import ItemsConsumer


@dataclass(frozen=True)
class Consumers:
    """The three bus consumers, for their counters in /v1/stats."""

    events: EventsConsumer
    items: ItemsConsumer
    erasure: ErasureConsumer


WorkersDep = Annotated[dict[str, ConsumerWorker], from_app_state("workers")]
ConsumersDep = Annotated[Consumers, from_app_state("consumers")]
StoreDep = Annotated[WideColumnStore, from_app_state("store")]
