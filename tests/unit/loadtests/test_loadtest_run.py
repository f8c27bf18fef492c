"""``loadtests/run.py`` decides whether ``make loadtest`` passes: its parsing and verdict must be right.

The locustfile is only loaded in a subprocess (``locust --list``): importing locust here would patch the
test process with gevent.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]

# Locust 2.x's CSV layout, as written by `locust --csv`.
HEADER = ",".join(
    (
        *("Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time"),
        *("Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s"),
        *("50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"),
    )
)
STATS = (
    HEADER
    + """
GET,/v1/recommendations,83,0,4,9.1,1.0,81.2,900.0,14.0,0.0,4,5,6,8,20,49,70,81,81,81,81
POST,/v1/events [feedback],76,2,4,7.0,1.1,58.0,40.0,12.8,0.3,4,5,6,7,15,37,50,58,58,58,58
POST,/v1/items [batch],0,0,0,0.0,0,0,0.0,0.0,0.0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A
,Aggregated,159,2,4,8.1,1.0,81.2,480.0,26.8,0.3,4,5,6,8,18,44,66,81,81,81,81
"""
)
FAILURES = """\
Method,Name,Error,Occurrences,First Seen,Last Seen
POST,/v1/events [feedback],"CatchResponseError(""accepted 1 of 2"")",2,2026-11-27T21:28:07Z,2026-11-27T21:28:08Z
"""


def _load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("loadtests_run", ROOT / "loadtests" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


run = _load_run()


def test_parses_locust_stats_and_failures(tmp_path: Path) -> None:
    (tmp_path / "s_stats.csv").write_text(STATS)
    (tmp_path / "s_failures.csv").write_text(FAILURES)
    rows = run.parse_stats(tmp_path / "s_stats.csv")
    assert [r.name for r in rows] == ["/v1/recommendations", "/v1/events [feedback]", "/v1/items [batch]", "Aggregated"]
    recs = rows[0]
    assert (recs.method, recs.requests, recs.failures, recs.rps) == ("GET", 83, 0, 14.0)
    assert (recs.p50, recs.p95, recs.p99) == (4.0, 49.0, 81.0)
    assert math.isnan(rows[2].p95)  # "N/A" for an endpoint without requests
    failures = run.parse_failures(tmp_path / "s_failures.csv")
    assert len(failures) == 1 and failures[0].occurrences == 2 and "accepted 1 of 2" in failures[0].error
    assert run.parse_failures(tmp_path / "missing.csv") == []


def test_table_shows_every_endpoint_and_the_total(tmp_path: Path) -> None:
    (tmp_path / "s_stats.csv").write_text(STATS)
    table = run.format_table(run.parse_stats(tmp_path / "s_stats.csv"))
    lines = table.splitlines()
    assert "req/s" in lines[0] and "p95" in lines[0] and "fails" in lines[0]
    assert any(line.startswith("GET /v1/recommendations") and line.split()[-5:] == ["14.0", "4", "49", "81", "0"]
               for line in lines)  # fmt: skip
    assert lines[-1].startswith("all endpoints") and lines[-1].split()[-1] == "2"


@pytest.mark.parametrize(
    ("requests", "failures", "locust_rc", "status"),
    [(100, 0, 0, 0), (100, 1, 1, 1), (0, 0, 0, 1), (100, 0, 2, 1)],
    ids=["clean", "a-failure", "nothing-requested", "locust-error"],
)
def test_verdict(requests: int, failures: int, locust_rc: int, status: int) -> None:
    nan = math.nan
    rows = [run.EndpointStats("", "Aggregated", requests, failures, nan, nan, nan, nan, nan)]
    assert run.verdict(rows, locust_rc)[0] == status


def test_summary_json_is_valid_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run is faked (no Locust) so only the reporting path is exercised."""

    commands: list[list[str]] = []

    def fake_call(command: list[str], **_: object) -> int:
        commands.append(command)
        prefix = Path(command[command.index("--csv") + 1])
        prefix.with_name(prefix.name + "_stats.csv").write_text(STATS)
        prefix.with_name(prefix.name + "_failures.csv").write_text(FAILURES)
        return 1

    monkeypatch.setattr(run.subprocess, "call", fake_call)
    out = tmp_path / "summary.json"
    status = run.main(["--run-time", "1s", "--csv-dir", str(tmp_path / "csv"), "--summary-json", str(out)])
    summary = json.loads(out.read_text())
    assert status == 1 and summary["ok"] is False
    # Locust's own HTML report is written next to the CSV files unless --html says elsewhere.
    assert commands[0][commands[0].index("--html") + 1] == str(tmp_path / "csv" / "locust.html")
    run.main(["--run-time", "1s", "--csv-dir", str(tmp_path / "csv"), "--html", str(tmp_path / "mine.html")])
    assert commands[1][commands[1].index("--html") + 1] == str(tmp_path / "mine.html")
    assert summary["endpoints"][2]["p95"] is None and summary["failures"][0]["occurrences"] == 2


def test_locustfile_loads_in_locust() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert listed.returncode == 0, listed.stderr
    assert "Shopper" in listed.stdout and "BulkIngester" in listed.stdout


@pytest.mark.parametrize(
    ("value", "collector", "ranker"),
    [
        ("", None, None),
        ("k-one", "k-one", "k-one"),
        # The release's API-keys Secret, which the chart hands to Locust: sent whole, it was a 401 on every request.
        ("ops:admin,shop-in:ingest,shop-out:serve", "shop-in", "shop-out"),
        ("ops:admin, shop:ingest+serve", "shop", "shop"),
        ("all-scopes,ops:admin", "all-scopes", "all-scopes"),
    ],
)
def test_the_load_tests_pick_a_key_per_service_from_an_api_keys_spec(
    value: str, collector: str | None, ranker: str | None
) -> None:
    script = (
        "import runpy; s = runpy.run_path('loadtests/locustfile.py')['SETTINGS']; "
        "print(repr((s.collector_key, s.ranker_key)))"
    )
    env = {**os.environ, "SCALEREC_API_KEY": value}
    env.pop("COLLECTOR_API_KEY", None)
    env.pop("RANKER_API_KEY", None)
    got = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip().splitlines()[-1] == repr((collector, ranker))
