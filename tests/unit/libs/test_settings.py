"""Settings defaults that decide where a service writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from scalerec_evaluator.config import EvaluatorSettings
from scalerec_ranker.config import RankerSettings
from scalerec_trainer.config import TrainerSettings

ROOT = Path(__file__).resolve().parents[3]
REPOSITORY_USERS = [TrainerSettings, EvaluatorSettings, RankerSettings]


@pytest.mark.parametrize("settings", REPOSITORY_USERS, ids=lambda s: s.__name__)
def test_the_model_repository_lives_under_data_dir_unless_set(
    settings: type[RankerSettings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MODEL_REPOSITORY", raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert settings().model_repository == tmp_path / "model_repository"
    monkeypatch.setenv("MODEL_REPOSITORY", "/models")
    assert settings().model_repository == Path("/models")


@pytest.mark.parametrize("settings", REPOSITORY_USERS, ids=lambda s: s.__name__)
def test_a_service_started_in_the_checkout_leaves_the_committed_example_alone(
    settings: type[RankerSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    for name in ("DATA_DIR", "MODEL_REPOSITORY"):
        monkeypatch.delenv(name, raising=False)
    assert settings().model_repository.resolve() != (ROOT / "model_repository").resolve()
