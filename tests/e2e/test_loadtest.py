"""`make loadtest`'s runner, briefly, against the running pipeline: real journeys, zero failed requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_locust_journeys_run_without_a_single_failure(pipeline: Pipeline, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LOADTEST_USERS": str(len(pipeline.shop.users)),
        "LOADTEST_ITEMS": str(len(pipeline.shop.items)),
    }
    summary = tmp_path / "summary.json"
    r = subprocess.run(
        [
            sys.executable,
            "loadtests/run.py",
            "--users",
            "8",
            "--spawn-rate",
            "8",
            "--run-time",
            "8s",
            "--collector-url",
            pipeline.url("collector"),
            "--ranker-url",
            pipeline.url("ranker"),
            "--summary-json",
            str(summary),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads(summary.read_text())
    print(r.stdout)
    assert rows, "no statistics"
    text = json.dumps(rows)
    assert "/v1/recommendations" in text
