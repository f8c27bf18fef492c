"""The HTML report of a real (small) demo run, opened in headless Chromium.

``scalerec demo`` runs the five services on a small synthetic shop and writes its HTML report; then
the demo's stack is served again and load-tested with Locust, another experiment result (the
fixture) replaces the demo's own, and ``scalerec report`` rebuilds the page from the folder alone.  Both pages are
rendered to PNG by Chromium, which must log no console error, fetch nothing but the file itself, and
draw every chart the data calls for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from scalerec_cli.cluster import LocalCluster
from scalerec_events.experiments import ExperimentOutcome

from tests.e2e.browser import PageVisit, visit

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "report"
USERS, ITEMS = 300, 150
SECTIONS = ["data", "stages", "offline", "curves", "training", "experiment", "latency", "samples"]
ALWAYS = {"stages", "offline-metrics", "ranking-curves", "training-curves"}
ENV = {"MODEL_SIZE": "demo", "TRAIN_AFTER_EXAMPLES": "0", "AUTH": "disabled"}


def _scalerec(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scalerec_cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report") / "demo"
    done = _scalerec(
        "demo",
        *("--users", str(USERS), "--items", str(ITEMS), "--events-per-user", "20", "--seed", "5"),
        *("--data-dir", str(folder), "--html", str(folder / "demo.html")),
        *("--env", "MAX_EPOCHS=3"),
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "HTML report written to" in done.stdout
    return folder


def _assert_clean_render(page: PageVisit, png: Path, html: Path, charts: set[str]) -> None:
    assert page.console_errors == [], page.console_errors
    # Self-contained: the only thing the browser loaded is the file itself.
    assert page.requests == [html.resolve().as_uri()], page.requests
    assert page.sections == SECTIONS
    assert set(page.charts) == charts, page.charts
    for name, (width, height) in page.charts.items():
        assert width > 250 and height > 80, f"chart {name} drawn at {width}x{height}"
    image = Image.open(png).convert("RGB")
    assert image.width == 1280 and image.height > 2500, image.size
    # Drawn, not blank: the charts put many distinct colours (lines, bars, anti-aliased text) on the page.
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 200


def test_the_demo_writes_a_report_that_renders_in_chromium(demo_dir: Path, tmp_path: Path) -> None:
    html = demo_dir / "demo.html"
    png = tmp_path / "demo.png"
    page = visit(html, png)
    skipped = json.loads((demo_dir / "report.json").read_text())["result"]["experiment"].get("skipped")
    if skipped:
        # On this small shop the offline gate judges v1 on a few dozen holdout users; when v1 does not beat
        # item-CF there is no champion for v2 to be tested against (v2 is then judged alone, and may become
        # the champion itself), and the demo says so instead of running one.
        # (The experiment's page is drawn from the fixture in the next test either way.)
        champion, candidate = skipped.removeprefix("champion ").split(", candidate v")
        assert champion in ("None", candidate), skipped
        _assert_clean_render(page, png, html, ALWAYS)
        assert "No experiment ran" in page.text and "No load test found" in page.text
        return
    _assert_clean_render(page, png, html, ALWAYS | {"experiment"})
    assert "No experiment ran" not in page.text and "No load test found" in page.text
    # The demo's own online experiment, written as the evaluator's results plus the decision, is what the page shows.
    outcome = ExperimentOutcome.model_validate_json((demo_dir / "experiment.json").read_text())
    assert outcome.decision.reason in page.text and outcome.results.method in page.text
    assert f"{outcome.results.variants[0].ctr:.2%}" in page.text
    assert "NDCG@K" in page.text and "model_v1" in page.text
    # The sample recommendations carry the ranker's explanations.
    assert "Because you" in page.text or "Popular right now" in page.text


def test_scalerec_report_rebuilds_it_with_an_experiment_and_a_load_test(demo_dir: Path, tmp_path: Path) -> None:
    # The demo's stack again (its trained model), under load from the Locust journeys of `make loadtest`.
    cluster = LocalCluster(demo_dir, env=ENV)
    cluster.start_all()
    try:
        env = {**os.environ, "LOADTEST_USERS": str(USERS), "LOADTEST_ITEMS": str(ITEMS)}
        load = subprocess.run(
            [
                *(sys.executable, "loadtests/run.py", "--users", "6", "--spawn-rate", "6", "--run-time", "6s"),
                *("--collector-url", cluster.url("collector"), "--ranker-url", cluster.url("ranker")),
                *("--csv-dir", str(demo_dir / "loadtest")),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        cluster.stop_all()
    assert load.returncode == 0, load.stdout[-3000:] + load.stderr[-3000:]
    assert (demo_dir / "loadtest" / "locust.html").stat().st_size > 1000  # Locust's own report, next to its CSV
    shutil.copy(FIXTURES / "experiment.json", demo_dir / "experiment.json")

    done = _scalerec("report", "--data-dir", str(demo_dir), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    html = demo_dir / "report.html"
    png = tmp_path / "report.png"
    page = visit(html, png)
    _assert_clean_render(page, png, html, ALWAYS | {"experiment", "latency"})
    assert "No experiment ran" not in page.text and "No load test found" not in page.text
    assert "GET /v1/recommendations" in page.text
    assert "challenger" in page.text and "two-proportion z-test" in page.text
