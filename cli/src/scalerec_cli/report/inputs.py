"""What the HTML report is built from, as typed models, and how it is read from a demo's data folder.

A finished ``scalerec demo`` leaves in its ``--data-dir``:

- ``report.json`` — the demo's own report (:class:`scalerec_cli.report.models.DemoReport`: data summary, stage times, the
  evaluator's report with its HR@K/NDCG@K curves, sample recommendations);
- ``model_repository/`` — each version's ``card.json`` with ``training_history`` (one record per epoch);
- ``experiment.json`` when an online experiment ran: the decided experiment with its per-variant results,
  exactly :class:`scalerec_events.experiments.ExperimentOutcome` (what the evaluator answers, plus the decision);
- ``loadtest/locust_stats.csv`` (and ``locust.html``) after ``make loadtest``.

Everything optional may be missing: the report then says so in its section instead of failing.  A file
that is present but malformed is an error naming the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from scalerec_events.experiments import ExperimentOutcome
from scalerec_models import repository as repo

from scalerec_cli.locust_stats import AGGREGATED, EndpointStats, parse_stats
from scalerec_cli.report import DEMO_REPORT_FILE, EXPERIMENT_FILE, LOADTEST_DIR, MODEL_REPOSITORY_DIR
from scalerec_cli.report.models import DemoReport

# loadtests/run.py's --csv prefix: locust_stats.csv, locust_failures.csv, locust.html.
LOCUST_PREFIX = "locust"
M = TypeVar("M", bound=BaseModel)


class ReportInputError(ValueError):
    """A report input that exists but cannot be used (missing, unreadable or malformed); says which."""


# ------------------------------------------------------------------------------------- training curve


@dataclass(frozen=True)
class EpochPoint:
    epoch: int
    loss: float
    val_ndcg: float | None


@dataclass(frozen=True)
class TrainingRun:
    """One model of one version: its per-epoch history from the card."""

    version: int
    model: str  # "ranker", "two_tower"
    epochs: list[EpochPoint]


# ------------------------------------------------------------------------------------------ load test


@dataclass(frozen=True)
class LoadTest:
    folder: Path
    endpoints: list[EndpointStats]  # without the total row
    total: EndpointStats | None
    html: Path | None  # Locust's own report, when it wrote one


@dataclass
class ReportData:
    """Everything one HTML report shows."""

    demo: DemoReport
    source: Path
    training: list[TrainingRun] = field(default_factory=list)
    experiment: ExperimentOutcome | None = None
    loadtest: LoadTest | None = None
    notes: list[str] = field(default_factory=list)  # inputs that were skipped, and why


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportInputError(f"{path}: not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportInputError(f"{path}: not readable JSON ({exc})") from None


def _validate(model: type[M], path: Path) -> M:
    try:
        return model.model_validate(_read_json(path))
    except ValidationError as exc:
        raise ReportInputError(f"{path} is not a {model.__name__}: {exc}") from None


def read_training(repository: Path, notes: list[str]) -> list[TrainingRun]:
    """Per-epoch records of every version's models, from their cards (oldest version first)."""
    runs: list[TrainingRun] = []
    # Both models of a version share one card; the ranker's is read.
    for version in repo.list_versions(repository, repo.RANKER_MODEL):
        try:
            card = repo.read_card(repository, repo.RANKER_MODEL, version)
        except (repo.ModelRepositoryError, ValueError) as exc:
            notes.append(f"model version {version}: no readable card ({exc})")
            continue
        history = card.get("training_history")
        if not history:
            notes.append(f"model version {version}: its card has no training_history (trained by an older trainer)")
            continue
        for model, records in sorted(history.items()):
            points = [
                EpochPoint(
                    epoch=int(r["epoch"]),
                    loss=float(r["loss"]),
                    val_ndcg=None if r.get("val_ndcg@10") is None else float(r["val_ndcg@10"]),
                )
                for r in records
            ]
            if points:
                runs.append(TrainingRun(version, model, points))
    return runs


def read_loadtest(folder: Path) -> LoadTest | None:
    stats = folder / f"{LOCUST_PREFIX}_stats.csv"
    if not stats.exists():
        return None
    try:
        rows = parse_stats(stats)
    except (KeyError, ValueError) as exc:
        raise ReportInputError(f"{stats}: not Locust's --csv statistics ({exc})") from None
    html = folder / f"{LOCUST_PREFIX}.html"
    return LoadTest(
        folder=folder,
        endpoints=[r for r in rows if r.name != AGGREGATED],
        total=next((r for r in rows if r.name == AGGREGATED), None),
        html=html if html.exists() else None,
    )


def load(
    data_dir: Path,
    demo_json: Path | None = None,
    experiment: Path | None = None,
    loadtest_dir: Path | None = None,
) -> ReportData:
    """Read what a finished demo left in ``data_dir`` (each path can be given elsewhere instead)."""
    demo_path = demo_json or data_dir / DEMO_REPORT_FILE
    if not demo_path.exists():
        raise ReportInputError(
            f"{demo_path}: not found. Run `scalerec demo --data-dir {data_dir}` first (it writes {DEMO_REPORT_FILE})"
        )
    data = ReportData(demo=_validate(DemoReport, demo_path), source=data_dir)
    data.training = read_training(data_dir / MODEL_REPOSITORY_DIR, data.notes)
    exp_path = experiment or data_dir / EXPERIMENT_FILE
    if exp_path.exists():
        data.experiment = _validate(ExperimentOutcome, exp_path)
    elif experiment is not None:
        raise ReportInputError(f"{experiment}: not found")
    data.loadtest = read_loadtest(loadtest_dir or data_dir / LOADTEST_DIR)
    if loadtest_dir is not None and data.loadtest is None:
        raise ReportInputError(f"{loadtest_dir}: no {LOCUST_PREFIX}_stats.csv (run loadtests/run.py --csv-dir there)")
    return data
