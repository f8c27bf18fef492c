"""Smoke run of benchmarks/gpu_scoring.py on CPU with tiny sizes: the table comes out and is sane.

The numbers themselves are only meaningful on a GPU (docs/triton.md); this keeps the
script runnable so a GPU session does not start by fixing it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu_scoring.py"


def _load() -> object:
    spec = importlib.util.spec_from_file_location("gpu_scoring", BENCHMARK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_scoring"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_help_explains_what_is_measured() -> None:
    out = subprocess.run([sys.executable, str(BENCHMARK), "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("floor", "cudagraph", "triton", "--device"):
        assert word in out


def test_cpu_smoke_run_prints_a_row_per_batch_size(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    rows = bench.main(  # type: ignore[attr-defined]
        [
            "--device",
            "cpu",
            "--batch-sizes",
            "1,4",
            "--history-len",
            "8",
            "--candidates",
            "4",
            "--embedding-rows",
            "500",
            "--feature-rows",
            "500",
            "--dim",
            "16",
            "--layers",
            "1",
            "--heads",
            "2",
            "--iters",
            "3",
            "--min-time",
            "0",
            "--warmup",
            "1",
            "--bandwidth-mib",
            "16",
        ]
    )
    assert [(r.backend, r.batch) for r in rows] == [("eager", 1), ("eager", 4)]
    assert all(r.samples_per_s > 0 and r.floor_ms > 0 and r.p50_ms <= r.p99_ms for r in rows)
    assert rows[1].floor_ms > rows[0].floor_ms  # more rows gathered, more bytes to read
    assert "samples/s" in capsys.readouterr().out
