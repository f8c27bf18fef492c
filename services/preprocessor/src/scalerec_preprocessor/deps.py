"""What routes take from the lifespan's app.state, typed (``Annotated[..., Depends()]``)."""

from __future__ import annotations

from typing import Annotated

from scalerec_adapters.store import WideColumnStore
from scalerec_core.http import from_app_state

from scalerec_preprocessor.pipeline import ChildPipelines, Pipeline

# The consumers: in this process (WORKERS=1) or in child processes; both answer ``await stats()``.
PipelineDep = Annotated[Pipeline | ChildPipelines, from_app_state("pipeline")]
StoreDep = Annotated[WideColumnStore, from_app_state("store")]
