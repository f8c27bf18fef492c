"""Run the Locust journeys headless for a fixed time, print a compact table, fail if any request failed.

``make loadtest`` calls this; ``make test`` runs it briefly against the embedded stack.  Locust is started
as a subprocess (``python -m locust``) because importing locust monkeypatches the interpreter with gevent;
this script itself imports nothing from locust, so its parsing is unit-testable in a plain process.

Exit status: 0 when requests were made and none failed; 1 when any failed (or Locust itself failed, or
nothing was requested at all — a load test that measured nothing must not pass).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from scalerec_cli.locust_stats import AGGREGATED, EndpointStats, Failure, parse_failures, parse_stats

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
__all__ = ["AGGREGATED", "EndpointStats", "Failure", "main", "parse_failures", "parse_stats"]


def _json_number(value: object) -> object:
    """NaN (an endpoint without requests) is not JSON; write null instead."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def format_table(rows: Sequence[EndpointStats]) -> str:
    """A table narrow enough for a CI log: requests/s, latency percentiles (ms) and failures per endpoint."""
    width = max([len(f"{r.method} {r.name}".strip()) for r in rows] + [len("endpoint")])
    header = f"{'endpoint':<{width}}  {'requests':>8}  {'req/s':>7}  {'p50':>5}  {'p95':>5}  {'p99':>5}  {'fails':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        label = f"{r.method} {r.name}".strip() if r.name != AGGREGATED else "all endpoints"
        if r.name == AGGREGATED:
            lines.append("-" * len(header))
        rps = "-" if math.isnan(r.rps) else f"{r.rps:.1f}"
        lines.append(
            f"{label:<{width}}  {r.requests:>8}  {rps:>7}  {_ms(r.p50):>5}  {_ms(r.p95):>5}  {_ms(r.p99):>5}"
            f"  {r.failures:>6}"
        )
    return "\n".join(lines)


def verdict(rows: Sequence[EndpointStats], locust_rc: int) -> tuple[int, str]:
    """The exit status and why: any failed request, a Locust error or an empty run fails the load test."""
    total = next((r for r in rows if r.name == AGGREGATED), None)
    requests = total.requests if total else sum(r.requests for r in rows)
    failures = total.failures if total else sum(r.failures for r in rows)
    if requests == 0:
        return 1, "FAIL: no request was made (are the services up and the users weighted above zero?)"
    if failures:
        return 1, f"FAIL: {failures} of {requests} requests failed"
    if locust_rc != 0:
        return 1, f"FAIL: locust exited with status {locust_rc} (see its log)"
    return 0, f"OK: {requests} requests, none failed"


def build_command(args: argparse.Namespace, csv_prefix: Path) -> list[str]:
    html = ["--html", str(args.html)] if args.html else []
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(args.locustfile),
        "--headless",
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        str(args.run_time),
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--stop-timeout",
        "5",
        "--exit-code-on-error",
        "1",
        "--loglevel",
        "WARNING",
        *html,
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=int(env.get("LOCUST_USERS", 20)), help="concurrent users")
    parser.add_argument("--spawn-rate", type=float, default=float(env.get("LOCUST_SPAWN_RATE", 10)), help="users/s")
    parser.add_argument("--run-time", default=env.get("LOCUST_RUN_TIME", "30s"), help="e.g. 30s, 5m")
    parser.add_argument("--collector-url", default=env.get("COLLECTOR_URL"), help="default http://127.0.0.1:8081")
    parser.add_argument("--ranker-url", default=env.get("RANKER_URL"), help="default http://127.0.0.1:8084")
    parser.add_argument(
        "--csv-dir",
        type=Path,
        help="keep Locust's CSV files, log and HTML report (locust.html) here (default: a temp dir, nothing kept)",
    )
    parser.add_argument("--html", type=Path, help="write Locust's own HTML report here (default: CSV_DIR/locust.html)")
    parser.add_argument("--summary-json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--locustfile", type=Path, default=LOCUSTFILE, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, csv_dir: Path) -> int:
    prefix = csv_dir / "locust"
    child_env = dict(os.environ)
    if args.collector_url:
        child_env["COLLECTOR_URL"] = args.collector_url
    if args.ranker_url:
        child_env["RANKER_URL"] = args.ranker_url
    log_path = csv_dir / "locust.log"
    print(
        f"locust: {args.users} users (+{args.spawn_rate}/s) for {args.run_time} against "
        f"collector {child_env.get('COLLECTOR_URL', 'http://127.0.0.1:8081')}, "
        f"ranker {child_env.get('RANKER_URL', 'http://127.0.0.1:8084')}",
        flush=True,
    )
    with log_path.open("w") as log:
        rc = subprocess.call(build_command(args, prefix), env=child_env, stdout=log, stderr=subprocess.STDOUT)
    stats_path = prefix.with_name(prefix.name + "_stats.csv")
    if not stats_path.exists():
        print(log_path.read_text()[-4000:], file=sys.stderr)
        print(f"FAIL: locust wrote no statistics (exit status {rc})", file=sys.stderr)
        return rc or 1
    rows = parse_stats(stats_path)
    print(format_table(rows))
    failures = parse_failures(prefix.with_name(prefix.name + "_failures.csv"))
    for f in failures[:20]:
        print(f"  {f.occurrences:>6} x {f.method} {f.name}: {f.error[:300]}")
    status, message = verdict(rows, rc)
    if status and not failures:
        print(log_path.read_text()[-4000:], file=sys.stderr)
    if args.summary_json:
        args.summary_json.write_text(
            json.dumps(
                {
                    "ok": status == 0,
                    "endpoints": [{k: _json_number(v) for k, v in asdict(r).items()} for r in rows],
                    "failures": [asdict(f) for f in failures],
                },
                indent=2,
            )
        )
    if args.html and args.html.exists():
        print(f"Locust's HTML report: {args.html}")
    if args.csv_dir:
        print(f"CSV files and log in {args.csv_dir}")
    print(message)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.csv_dir:
        args.csv_dir.mkdir(parents=True, exist_ok=True)
        if args.html is None:
            args.html = args.csv_dir / "locust.html"
        return run(args, args.csv_dir)
    with tempfile.TemporaryDirectory(prefix="scalerec-loadtest-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
