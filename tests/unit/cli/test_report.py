"""``scalerec report``: inputs → one self-contained HTML page (fixture data from a small real demo run).

The browser side (Chromium renders it without console errors) is tests/e2e/test_report_browser.py.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markupsafe import escape
from rich.console import Console
from scalerec_cli import demo
from scalerec_cli.__main__ import main
from scalerec_cli.report import html, inputs
from scalerec_cli.report.inputs import ReportInputError
from scalerec_cli.report.models import DemoReport
from scalerec_events.experiments import ExperimentOutcome, VariantResult

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "report"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A demo's data folder: report.json, a model card with training history, Locust CSV files."""
    folder = tmp_path / "demo"
    shutil.copytree(FIXTURES / "demo", folder)
    return folder


class _Tags(HTMLParser):
    """Every start tag with its attributes, and whether every opened element was closed."""

    VOID = {"meta", "br", "img", "input", "link", "hr", "path", "use", "rect", "circle", "ellipse", "line", "stop"}

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


def _parse(page: str) -> _Tags:
    tags = _Tags()
    tags.feed(page)
    tags.close()
    assert tags.open == [], f"unclosed elements: {tags.open}"
    return tags


def _charts(tags: _Tags) -> list[str]:
    return [str(a.get("data-chart")) for t, a in tags.tags if t == "figure"]


def test_every_section_and_chart_from_a_full_data_folder(data_dir: Path) -> None:
    shutil.copy(FIXTURES / "experiment.json", data_dir / "experiment.json")
    (data_dir / "loadtest" / "locust.html").write_text("<html>Locust</html>")
    page = html.render(inputs.load(data_dir), link_base=data_dir)
    tags = _parse(page)
    ids = [a.get("id") for t, a in tags.tags if t == "section"]
    assert ids == ["data", "stages", "offline", "curves", "training", "experiment", "latency", "samples"]
    charts = _charts(tags)
    assert charts == ["stages", "offline-metrics", "ranking-curves", "training-curves", "experiment", "latency"]
    # Each chart is a real matplotlib SVG inside its figure, drawn from the data (not a placeholder).
    assert page.count("<svg ") == len(charts)
    figures = re.findall(r'<figure class="chart" data-chart="([a-z-]+)"><svg .*?</svg>', page, flags=re.S)
    assert figures == charts
    ranking = re.search(r'data-chart="ranking-curves"><svg .*?</svg>', page, flags=re.S)
    assert ranking and "NDCG@K" in ranking.group(0) and "model_v1" in ranking.group(0)
    # No id is defined twice across the inline SVGs (clip paths, markers would bleed into each other).
    defined = re.findall(r'\bid="([^"]+)"', page)
    assert len(defined) == len(set(defined)), sorted({d for d in defined if defined.count(d) > 1})
    for ref in re.findall(r'(?:url\(#|href="#)([^")]+)', page):
        assert ref in defined, f"reference to #{ref}, which the page does not define"
    # The figures shown are the ones in the inputs.
    demo = json.loads((data_dir / "report.json").read_text())
    assert demo["result"]["evaluation"]["decision"] in page
    assert (
        "two-proportion z-test" in page and '+1.02 pp [-1.46, +3.50]<span class="sub">p = 0.42</span>' in page
    )  # challenger's CTR - control's
    assert "GET /v1/recommendations" in page and 'href="loadtest/locust.html"' in page
    first_reason = demo["result"]["samples"][0]["items"][0]["reason"]
    assert first_reason and first_reason in page


def test_the_page_is_self_contained(data_dir: Path) -> None:
    page = html.render(inputs.load(data_dir))
    tags = _parse(page)
    for tag, attrs in tags.tags:
        assert "src" not in attrs, f"<{tag} src=...> loads something"
        assert tag not in ("script", "link", "iframe", "img", "object"), f"<{tag}> in a page meant to be inert"
        href = attrs.get("href") or attrs.get("xlink:href") or ""
        assert not re.match(r"(?i)(https?:)?//", href), f"<{tag} href={href}> points outside the file"
    assert "@import" not in page and not re.search(r"url\(\s*['\"]?(https?:)?//", page)


def test_missing_optional_inputs_are_said_not_drawn(data_dir: Path) -> None:
    shutil.rmtree(data_dir / "loadtest")
    shutil.rmtree(data_dir / "model_repository")
    page = html.render(inputs.load(data_dir))
    assert _charts(_parse(page)) == ["stages", "offline-metrics", "ranking-curves"]
    assert "No experiment ran" in page and "No load test found" in page
    assert "No per-epoch history" in page


def test_an_old_evaluator_report_without_curves_still_renders(data_dir: Path) -> None:
    report = json.loads((data_dir / "report.json").read_text())
    del report["result"]["evaluation"]["curves"]
    (data_dir / "report.json").write_text(json.dumps(report))
    page = html.render(inputs.load(data_dir))
    assert "ranking-curves" not in _charts(_parse(page)) and "has no curves" in page


def test_text_from_the_data_is_escaped(data_dir: Path) -> None:
    report = json.loads((data_dir / "report.json").read_text())
    report["result"]["samples"][0]["items"][0]["title"] = "<script>alert(1)</script> & co"
    (data_dir / "report.json").write_text(json.dumps(report))
    page = html.render(inputs.load(data_dir))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page


def test_the_cli_writes_the_page_and_names_bad_inputs(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--data-dir", str(data_dir)]) == 0
    out = data_dir / "report.html"
    assert out.read_text().startswith("<!DOCTYPE html>") and str(out.resolve()) in capsys.readouterr().out
    elsewhere = data_dir.parent / "elsewhere" / "page.html"
    assert main(["report", "--data-dir", str(data_dir), "--out", str(elsewhere)]) == 0 and elsewhere.exists()

    bad = json.loads((FIXTURES / "experiment.json").read_text())
    row = bad["results"]["variants"][0]
    row["clicked_impressions"] = row["impressions"] + 1
    (data_dir / "experiment.json").write_text(json.dumps(bad))
    assert main(["report", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "experiment.json is not a ExperimentOutcome" in err and "clicked_impressions" in err

    (data_dir / "experiment.json").unlink()
    (data_dir / "report.json").unlink()
    assert main(["report", "--data-dir", str(data_dir)]) == 2
    assert "scalerec demo" in capsys.readouterr().err


def test_a_malformed_demo_report_names_the_field(data_dir: Path) -> None:
    report = json.loads((data_dir / "report.json").read_text())
    del report["result"]["evaluation"]["models"]
    (data_dir / "report.json").write_text(json.dumps(report))
    with pytest.raises(ReportInputError, match=r"(?s)report\.json is not a DemoReport.*result\.evaluation\.models"):
        inputs.load(data_dir)


def test_the_report_reads_what_the_demo_writes(data_dir: Path) -> None:
    # The fixture is a real demo's experiment.json: the evaluator's results plus the decision, one model.
    outcome = ExperimentOutcome.model_validate_json((FIXTURES / "experiment.json").read_text())
    assert ExperimentOutcome.model_validate_json(outcome.model_dump_json()) == outcome
    champion, challenger = outcome.results.variants
    assert (champion.name, challenger.name) == ("champion", "challenger") and challenger.ctr_vs_control is not None
    # A variant's own CTR interval is Wald's, from its counts (the evaluator only computes the differences').
    n, p = champion.impressions, champion.clicked_impressions / champion.impressions
    half = 1.959963984540054 * (p * (1 - p) / n) ** 0.5
    assert champion.ctr_interval is not None
    assert champion.ctr_interval.low == pytest.approx(p - half) and champion.ctr_interval.high == pytest.approx(
        p + half
    )

    shutil.copy(FIXTURES / "experiment.json", data_dir / "experiment.json")
    page = html.render(inputs.load(data_dir))
    section = page[page.index('<section id="experiment">') : page.index("</section>", page.index('id="experiment"'))]
    section = re.sub(r"(?s)<svg.*?</svg>", "", section)
    ci = champion.ctr_interval
    assert f'{champion.ctr:.2%}<span class="sub">[{ci.low:.2%}, {ci.high:.2%}]</span>' in section
    d = challenger.ctr_vs_control
    assert (
        f'{100 * d.diff:+.2f} pp [{100 * d.low:+.2f}, {100 * d.high:+.2f}]<span class="sub">p = {d.p_value:.3g}'
        in section
    )
    assert outcome.results.method in section and f"p = {outcome.results.srm.p_value:.3g}" in section
    assert "kept the champion" in section and str(escape(outcome.decision.reason)) in section
    assert f"{challenger.ndcg_at_10:.4f}" in section and "NDCG@10" in section


def test_variant_results_are_checked() -> None:
    good = json.loads((FIXTURES / "experiment.json").read_text())
    row = dict(good["results"]["variants"][0])
    assert VariantResult.model_validate(row).ndcg_at_10 == row["ndcg_at_10"]
    with pytest.raises(ValueError, match="clicked_impressions"):
        VariantResult.model_validate({**row, "clicked_impressions": row["impressions"] + 1})
    with pytest.raises(ValueError, match="ctr"):
        VariantResult.model_validate({**row, "ctr": 1.5})
    with pytest.raises(ValueError, match="not clicked_impressions / impressions"):
        VariantResult.model_validate({**row, "ctr": row["ctr"] / 2})
    empty = VariantResult.model_validate(
        {**row, **dict.fromkeys(("impressions", "clicked_impressions", "converted_impressions"), 0), "ctr": 0.0}
    )
    assert empty.ctr_interval is None and empty.model_dump()["conversion_rate_interval"] is None
    results = good["results"]
    with pytest.raises(ValueError, match="variants"):
        ExperimentOutcome.model_validate({**good, "results": {**results, "variants": results["variants"][:1]}})
    with pytest.raises(ValueError, match="control variant 'nobody'"):
        ExperimentOutcome.model_validate({**good, "results": {**results, "control": "nobody"}})
    with pytest.raises(ValueError, match="decision"):
        ExperimentOutcome.model_validate({k: v for k, v in good.items() if k != "decision"})


def test_the_demo_writes_its_report_as_the_model_the_page_reads(data_dir: Path, tmp_path: Path) -> None:
    """`scalerec demo` builds a DemoReport, prints it and writes it; `scalerec report` reads the same model back.

    The demo's own writer and printer run here (not a hand-made JSON), with the experiment it embeds."""
    fixture = DemoReport.model_validate_json((data_dir / "report.json").read_text())
    outcome = ExperimentOutcome.model_validate_json((FIXTURES / "experiment.json").read_text())
    report = fixture.model_copy(update={"result": fixture.result.model_copy(update={"experiment": outcome})})
    assert report.config is not None and report.result.ingested is not None
    console = Console(record=True, width=400)
    demo._print_report(console, report)
    copy = tmp_path / "elsewhere" / "report.json"
    demo._write_reports(console, report, argparse.Namespace(data_dir=data_dir, json=copy, no_html=False, html=None))

    assert inputs.load(data_dir).demo == report  # every field survives the round trip, typed
    assert DemoReport.model_validate_json(copy.read_text()) == report
    printed = console.export_text()
    mine = f"model_v{report.result.version}"
    assert mine in printed and f"{report.result.evaluation.ndcg_of(mine):.4f}" in printed
    assert f"Online experiment {outcome.experiment.experiment_id}" in printed and outcome.decision.reason in printed
    assert report.model_beats_popularity() == (
        report.result.evaluation.models[mine]["ndcg@10"] > report.result.evaluation.models["popularity"]["ndcg@10"]
    )
    page = (data_dir / "report.html").read_text()
    events = report.result.ingested.events
    assert f'<tr><th>events</th><td class="num">{events.accepted:,}</td>' in page
    assert f"<th>model size</th><td>{report.config.model_size}</td>" in page
    assert f"model v{report.result.version}" in page


def test_a_report_of_an_older_demo_without_config_or_ingest_counts_still_renders(data_dir: Path) -> None:
    report = json.loads((data_dir / "report.json").read_text())
    del report["config"], report["result"]["ingested"]
    (data_dir / "report.json").write_text(json.dumps(report))
    page = html.render(inputs.load(data_dir))
    assert "Ingested through the collector" not in page and "Demo settings" not in page
