"""The ``scalerec report`` subcommand (and the helper ``scalerec demo`` calls after a run)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scalerec_cli.report import HTML_REPORT_FILE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="Write the HTML report of a finished demo (no re-run needed)",
        description=(
            "Build one self-contained HTML page from what `scalerec demo` left in its data folder: "
            "report.json, the model repository's cards, experiment.json (if an experiment ran) and "
            "loadtest/locust_stats.csv (after `make loadtest`)."
        ),
    )
    p.add_argument("--data-dir", type=Path, default=Path("var/demo"), help="the demo's --data-dir (default var/demo)")
    p.add_argument("--out", type=Path, help=f"the HTML file to write (default DATA_DIR/{HTML_REPORT_FILE})")
    p.add_argument("--demo-json", type=Path, help="the demo's JSON report (default DATA_DIR/report.json)")
    p.add_argument("--experiment", type=Path, help="an experiment result JSON (default DATA_DIR/experiment.json)")
    p.add_argument("--loadtest-dir", type=Path, help="Locust's --csv folder (default DATA_DIR/loadtest)")
    p.set_defaults(func=run)


def build(
    data_dir: Path,
    out: Path | None = None,
    demo_json: Path | None = None,
    experiment: Path | None = None,
    loadtest_dir: Path | None = None,
) -> Path:
    """Read the inputs, render, write; returns the page's path.  Raises ReportInputError on bad input."""
    from scalerec_cli.report import html, inputs  # matplotlib only when a report is written

    data = inputs.load(data_dir, demo_json=demo_json, experiment=experiment, loadtest_dir=loadtest_dir)
    return html.write(data, out or data_dir / HTML_REPORT_FILE)


def run(args: argparse.Namespace) -> int:
    from scalerec_cli.report.inputs import ReportInputError

    try:
        path = build(args.data_dir, args.out, args.demo_json, args.experiment, args.loadtest_dir)
    except ReportInputError as exc:
        print(f"scalerec report: {exc}", file=sys.stderr)
        return 2
    print(f"HTML report written to {path.resolve()}")
    return 0
