"""Smoke runs of the benchmark scripts: a few seconds each, checking that they run and print their tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def run_benchmark(script: str, *args: str) -> str:
    """``benchmarks/<script>`` with ``args`` from the repository root; its standard output, once it exited 0."""
    r = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout
