"""One release version: scalerec_core.__version__; every package and chart says the same."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest
import scalerec_core
from fastapi import FastAPI
from scalerec_collector.config import CollectorSettings
from scalerec_collector.main import create_app

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.relative_to(ROOT) for p in ROOT.glob("services/*/pyproject.toml"))
PYPROJECTS = [Path("libs/pyproject.toml"), Path("cli/pyproject.toml"), *SERVICES]
CHARTS = sorted(p.relative_to(ROOT) for p in (ROOT / "charts").glob("*/Chart.yaml"))


@pytest.mark.parametrize("path", PYPROJECTS, ids=str)
def test_packages_carry_the_project_version(path: Path) -> None:
    project = tomllib.loads((ROOT / path).read_text())["project"]
    assert project["version"] == scalerec_core.__version__, f"{path}: set it to scalerec_core.__version__"


@pytest.mark.parametrize("path", CHARTS, ids=str)
def test_charts_deploy_the_project_version(path: Path) -> None:
    found = re.search(r'^appVersion:\s*"?([^"\s]+)"?', (ROOT / path).read_text(), re.MULTILINE)
    assert found is not None and found.group(1) == scalerec_core.__version__, path


def test_the_api_documents_the_project_version(tmp_path: Path) -> None:
    app: FastAPI = create_app(CollectorSettings(data_dir=tmp_path, auth="disabled"))
    assert app.openapi()["info"]["version"] == scalerec_core.__version__


@pytest.mark.parametrize("service", ["collector", "preprocessor", "trainer", "evaluator", "ranker"])
def test_every_service_app_is_titled_and_versioned_alike(tmp_path: Path, service: str) -> None:
    """Built without starting (no lifespan): the title, the release version and the common endpoints."""
    main = importlib.import_module(f"scalerec_{service}.main")
    config = importlib.import_module(f"scalerec_{service}.config")
    settings_class = getattr(config, f"{service.capitalize()}Settings")
    app: FastAPI = main.create_app(settings_class(data_dir=tmp_path, auth="disabled"))
    info = app.openapi()["info"]
    assert info["title"] == f"ScaleRec {service}" and info["version"] == scalerec_core.__version__
    assert {"/healthz", "/readyz", "/metrics"} <= {getattr(r, "path", "") for r in app.routes}
    assert app.state.settings.service_name == service
