"""What routes take from the lifespan's app.state, typed (``Annotated[..., Depends()]``)."""

from __future__ import annotations

from typing import Annotated

from scalerec_core.http import from_app_state

from scalerec_trainer.jobs import Trainer

TrainerDep = Annotated[Trainer, from_app_state("trainer")]
