"""What routes take from the lifespan's app.state, typed (``Annotated[..., Depends()]``)."""

from __future__ import annotations

from typing import Annotated

from scalerec_adapters.bus import Producer
from scalerec_core.http import from_app_state

from scalerec_collector.config import CollectorSettings
from scalerec_collector.dedupe import RecentIds

SettingsDep = Annotated[CollectorSettings, from_app_state("settings")]
ProducerDep = Annotated[Producer, from_app_state("producer")]
RecentIdsDep = Annotated[RecentIds, from_app_state("recent_ids")]
