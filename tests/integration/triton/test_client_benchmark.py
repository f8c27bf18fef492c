"""A few-request run of benchmarks/triton_client.py against a real tritonserver: both rows come out, the
wrapper's with its ratio to the floor (the figures themselves are docs/benchmarks.md's)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[3] / "benchmarks" / "triton_client.py"


def test_the_triton_client_benchmark_runs_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("triton_client_benchmark", BENCHMARK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--requests", "30", "--rounds", "1", "--candidates", "50"])
    assert [r["client"].split()[0] for r in rows] == ["tritonclient", "TritonScorer.infer"]
    assert all(r["req_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)
    assert rows[1]["ratio"] > 0
    out = capsys.readouterr().out
    assert "| TritonScorer.infer (the ranker's) |" in out and "ratio to floor" in out
