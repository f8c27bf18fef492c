"""``scalerec eval-dataset`` end to end on a tiny synthetic MovieLens file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from scalerec_cli.eval_dataset import add_parser, run

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "movielens_tiny"
ALL = ["popularity", "item-cf", "user-cf", "bpr", "two-tower", "sequential"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scalerec")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def _full_run(out: Path) -> argparse.Namespace:
    return _parse(
        [
            "eval-dataset",
            "--path",
            str(FIXTURES),
            "--format",
            "movielens-1m",
            "--json",
            str(out),
            "--size",
            "demo",
            "--seed",
            "3",
            "--threads",
            "1",
            "--quiet",
        ]
    )


def _numbers(report: dict[str, object]) -> dict[str, object]:
    """Everything a run reports except how long it took."""
    models = report["models"]
    assert isinstance(models, dict)
    return {name: {k: v for k, v in row.items() if k != "train_seconds"} for name, row in models.items()}


def test_prints_every_model_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    assert run(_full_run(out)) == 0
    printed = capsys.readouterr().out
    assert "HR@10" in printed and "NDCG@10" in printed
    for name in ALL:
        assert any(line.startswith(name + " ") for line in printed.splitlines()), name
    report = json.loads(out.read_text())
    assert report["dataset"].startswith("movielens-1m")
    assert "leave-one-out" in report["protocol"]
    assert set(report["models"]) == set(ALL)
    for row in report["models"].values():
        assert 0.0 <= row["ndcg@10"] <= row["hr@10"] <= 1.0
        assert row["train_seconds"] >= 0.0
    # On a world where taste follows genre, collaborative models beat chance (10 of ~24 candidates).
    assert report["models"]["item-cf"]["hr@10"] > 0.0
    # Reproducible by construction: fixed epochs chosen on validation, seeds, no wall-clock budget.
    assert report["seed"] == 3 and report["deterministic"] is True and report["time_budget_s"] is None
    for name in ("two-tower", "sequential"):
        params = report["models"][name]["params"]
        assert params["seed"] == 3
        assert 1 <= params["epochs"] <= params["epochs_run"] <= params["max_epochs"]
    assert report["models"]["bpr"]["params"]["seed"] == 3
    # The candidate generators' recall on the validation item; the union holds at least as much as any one.
    recall = report["models"]["two-tower"]["params"]["candidates_recall@100_val"]
    assert set(recall) == {"retrieval", "item-cf", "trending", "fresh", "union", "union_size"}
    assert recall["union"] >= max(recall[k] for k in ("retrieval", "item-cf", "trending", "fresh"))
    assert "candidate recall@100" in printed

    # The same command on the same data gives the same numbers, to the last digit.
    again = tmp_path / "again.json"
    assert run(_full_run(again)) == 0
    assert _numbers(json.loads(again.read_text())) == _numbers(report)


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["eval-dataset", "--path", str(tmp_path), "--format", "movielens-100k", "--quiet"])
    assert run(args) == 2
    assert "u.data" in capsys.readouterr().err
    args = _parse(["eval-dataset", "--path", str(FIXTURES), "--format", "csv", "--models", "popularity,magic"])
    assert run(args) == 2
    assert "magic" in capsys.readouterr().err


def test_single_model_subset(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(
        [
            "eval-dataset",
            "--path",
            str(FIXTURES / "ratings.csv"),
            "--format",
            "movielens-csv",
            "--models",
            "popularity,item-cf",
            "--quiet",
        ]
    )
    assert run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith(("popularity ", "item-cf ")) for line in lines) == 2
    assert not any(line.startswith("sequential ") for line in lines)
