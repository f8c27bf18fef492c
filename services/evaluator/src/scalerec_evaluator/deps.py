"""What routes take from the lifespan's app.state, typed (``Annotated[..., Depends()]``)."""

from __future__ import annotations

from typing import Annotated

from scalerec_core.http import from_app_state

from scalerec_evaluator.config import EvaluatorSettings
from scalerec_evaluator.experiments import Experiments
from scalerec_evaluator.service import Evaluator

SettingsDep = Annotated[EvaluatorSettings, from_app_state("settings")]
EvaluatorDep = Annotated[Evaluator, from_app_state("evaluator")]
ExperimentsDep = Annotated[Experiments, from_app_state("experiments")]
