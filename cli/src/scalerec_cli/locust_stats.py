"""Locust's ``--csv`` statistics, parsed: what ``make loadtest`` judges and what ``scalerec report`` shows.

Plain CSV reading, no locust import (importing locust patches the interpreter with gevent), so the
load-test runner (``loadtests/run.py``) and the HTML report share one reading of Locust's files.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

# The name of the total row Locust writes last.
AGGREGATED = "Aggregated"


@dataclass(frozen=True)
class EndpointStats:
    """One row of Locust's ``*_stats.csv``: an endpoint (``name``) or the ``Aggregated`` total.

    Latencies are milliseconds; NaN where Locust wrote ``N/A`` (an endpoint without requests).
    """

    method: str
    name: str
    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float
    max: float


@dataclass(frozen=True)
class Failure:
    method: str
    name: str
    error: str
    occurrences: int


def _number(value: str | None) -> float:
    """Locust writes ``N/A`` for percentiles of an endpoint without requests."""
    try:
        return float(value) if value not in (None, "", "N/A") else math.nan
    except ValueError:
        return math.nan


def parse_stats(path: Path) -> list[EndpointStats]:
    """Rows of ``<prefix>_stats.csv`` (endpoints first, ``Aggregated`` last, as Locust writes them)."""
    with path.open(newline="") as f:
        return [
            EndpointStats(
                method=row.get("Type", "") or "",
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                rps=_number(row.get("Requests/s")),
                p50=_number(row.get("50%")),
                p95=_number(row.get("95%")),
                p99=_number(row.get("99%")),
                max=_number(row.get("Max Response Time")),
            )
            for row in csv.DictReader(f)
        ]


def parse_failures(path: Path) -> list[Failure]:
    """Rows of ``<prefix>_failures.csv``; none when the file is missing (Locust writes it only with --csv)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [
            Failure(row.get("Method", ""), row.get("Name", ""), row.get("Error", ""), int(row.get("Occurrences") or 0))
            for row in csv.DictReader(f)
        ]
