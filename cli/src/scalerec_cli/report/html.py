"""Render :class:`ReportData` into one self-contained HTML page (Jinja2 template, charts inline as SVG).

Nothing in the page is fetched: styles are inline, charts are ``<svg>`` elements, there is no script.
The page can be mailed, attached to a CI run or opened from disk years later and look the same.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from scalerec_core import __version__
from scalerec_events.experiments import CONFIDENCE

from scalerec_cli.report import charts
from scalerec_cli.report.inputs import ReportData

TEMPLATE = "report.html.j2"


def _number(value: object, digits: int | None = None) -> str:
    """Counts with thousands separators; other numbers to 4 significant digits (or ``digits`` decimals)."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if digits is not None:
            return f"{value:,.{digits}f}"
        return f"{value:,.0f}" if value.is_integer() or abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def _percent(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}%}"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("scalerec_cli.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,  # a misspelt field fails the render instead of showing nothing
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _number
    env.filters["pct"] = _percent
    return env


def render(data: ReportData, link_base: Path | None = None, generated_at: datetime | None = None) -> str:
    """The page as text; links to other files are relative to ``link_base`` (the page's folder).

    Charts are drawn only for sections that have data; the others say what is missing.
    """
    demo = data.demo
    ev = demo.result.evaluation
    svg: dict[str, Markup] = {
        "stages": Markup(charts.stage_times(demo.stages_seconds)),
        "offline": Markup(charts.offline_metrics(ev)),
    }
    if ev.curves:
        svg["curves"] = Markup(charts.ranking_curves(ev))
    if data.training:
        svg["training"] = Markup(charts.training_curves(data.training))
    if data.experiment is not None:
        svg["experiment"] = Markup(charts.experiment_variants(data.experiment))
    if data.loadtest is not None and any(e.requests for e in data.loadtest.endpoints):
        svg["latency"] = Markup(charts.latency_percentiles(data.loadtest.endpoints))
    models = sorted(ev.models.items(), key=lambda kv: -kv[1].get(ev.metric, 0.0))
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            data=data,
            demo=demo,
            ev=ev,
            models=models,
            metric_columns=[c for c in charts.METRICS if any(c in m for _, m in models)],
            svg=svg,
            confidence=CONFIDENCE,
            version=__version__,
            generated_at=(generated_at or datetime.now(UTC)).isoformat(timespec="seconds"),
            locust_html=_relative(data.loadtest.html, link_base or data.source)
            if data.loadtest and data.loadtest.html
            else None,
        )
    )


def _relative(path: Path, base: Path) -> str:
    """A link to Locust's own report that works from the page's folder."""
    try:
        return os.path.relpath(path.resolve(), base.resolve())
    except ValueError:  # another drive
        return str(path)


def write(data: ReportData, out: Path) -> Path:
    """Render and write atomically (a reader never sees half a page)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render(data, link_base=out.parent), encoding="utf-8")
    tmp.replace(out)
    return out
