"""Smoke run of benchmarks/ingest_throughput.py with a tiny shop: every stage runs and reports.

The figures of a few-second run mean nothing (docs/benchmarks.md has the real ones); this keeps
the script working against the real HBase of the stack and the real collector under wrk.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import HBASE_THRIFT_PORT, HOST, KAFKA_PORT, require_server

REPO = Path(__file__).resolve().parents[2]
BENCHMARK = REPO / "benchmarks" / "ingest_throughput.py"
ROW = re.compile(
    r"^\| (?P<stage>[^|]+?) +\| +(?P<rate>[\d,]+) \| (?P<floor>[^|]+?) +\| +(?P<base>[\d,]+) \| +(?P<ratio>[\d.]+) \|"
)


def test_smoke_run_reports_every_stage_with_its_floor() -> None:
    require_server("HBase Thrift", HBASE_THRIFT_PORT, "SCALEREC_HBASE_THRIFT_PORT")
    require_server("Kafka", KAFKA_PORT, "SCALEREC_KAFKA_PORT")
    args = ["--users", "60", "--items", "40", "--hbase-events", "600", "--http-batch", "50"]
    args += ["--connections", "2", "--duration", "1", "--hbase-url", f"hbase://{HOST}:{HBASE_THRIFT_PORT}"]
    args += ["--kafka-url", f"kafka://{HOST}:{KAFKA_PORT}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, str(BENCHMARK), *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "load average" in out.stdout  # the machine's load is printed with the figures
    rows = {m["stage"].strip(): m for m in map(ROW.match, out.stdout.splitlines()) if m}
    assert set(rows) == {
        "bus append, batches of 1,000",
        "preprocessor, embedded (SQLite)",
        "preprocessor service, WORKERS=1",
        "preprocessor service, WORKERS=2",
        "preprocessor service, WORKERS=4",
        "preprocessor, HBase",
        "collector HTTP, batches of 50, WORKERS=1",
        "collector HTTP, batches of 50, WORKERS=2",
        "wrk ceiling: bare FastAPI reading the bodies",
        "Kafka bus append, batches of 50",
        "preprocessor service, Kafka + HBase",
        "collector HTTP on Kafka, batches of 50, WORKERS=1",
    }, out.stdout
    for m in rows.values():
        assert int(m["rate"].replace(",", "")) > 0 and int(m["base"].replace(",", "")) > 0, out.stdout
    for stage in ("batches of 50, WORKERS=1 ", "batches of 50, WORKERS=2 ", "on Kafka, batches of 50, WORKERS=1 "):
        assert "0 errors" in out.stdout.split(stage, 1)[-1].splitlines()[0], out.stdout
