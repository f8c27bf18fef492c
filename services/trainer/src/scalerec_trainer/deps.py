"""Typed accessors for what the lifespan put on app.state (used with Depends).

Async so that FastAPI calls them on the event loop instead of hopping to a thread.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from scalerec_trainer.jobs import Trainer


async def _trainer(request: Request) -> Trainer:
    return request.app.state.trainer


TrainerDep = Annotated[Trainer, Depends(_trainer)]
