"""Typed accessors for what the lifespan put on app.state (used with Depends).

Async so that FastAPI calls them on the event loop instead of hopping to a thread per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from scalerec_adapters.bus import Producer

from scalerec_collector.config import CollectorSettings
from scalerec_collector.dedupe import RecentIds


async def _settings(request: Request) -> CollectorSettings:
    return request.app.state.settings


async def _producer(request: Request) -> Producer:
    return request.app.state.producer


async def _recent(request: Request) -> RecentIds:
    return request.app.state.recent_ids


SettingsDep = Annotated[CollectorSettings, Depends(_settings)]
ProducerDep = Annotated[Producer, Depends(_producer)]
RecentIdsDep = Annotated[RecentIds, Depends(_recent)]
