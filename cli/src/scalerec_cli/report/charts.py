"""The report's charts: matplotlib figures written as inline SVG (no files, no pyplot state).

Each function takes the report's typed inputs and returns the ``<svg>`` element as text; the template
puts it into the page as it is.  Text stays text in the SVG (searchable, crisp at any zoom), and each
chart's element ids are salted with its name, so several charts in one page never share an id.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scalerec_events.experiments import CONFIDENCE, ExperimentOutcome, RateInterval

from scalerec_cli.locust_stats import EndpointStats
from scalerec_cli.report.inputs import TrainingRun
from scalerec_cli.report.models import Evaluation

# Colour-blind-safe (Okabe-Ito); the candidate model is always the first colour.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
METRICS = ("ndcg@10", "served_ndcg@10", "hr@10", "mrr", "coverage@10", "candidate_recall")
_STYLE: dict[Any, Any] = {
    "svg.fonttype": "none",  # text as <text>, not paths
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 96,
}


_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(url\(#|href="#)([^")]+)')


def to_svg(fig: Figure, name: str) -> str:
    """The figure as an ``<svg>`` element (XML prolog and DOCTYPE dropped: it goes inside HTML).

    matplotlib numbers its element ids per file (``figure_1``, ``axes_1``, clip paths): every id and
    every reference to one gets the chart's name as prefix, so ids stay unique in a page of charts.
    """
    buf = io.StringIO()
    with mpl.rc_context({**_STYLE, "svg.hashsalt": f"scalerec-{name}"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    ids = set(_ID.findall(text))
    text = _ID.sub(lambda m: f'id="{name}-{m.group(1)}"', text)
    return _REF.sub(lambda m: f"{m.group(1)}{name}-{m.group(2)}" if m.group(2) in ids else m.group(0), text)


def _figure(width: float, height: float, cols: int = 1) -> tuple[Figure, list[Axes]]:
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(1, cols, squeeze=False)[0]
    return fig, list(axes)


def _model_order(evaluation: Evaluation) -> list[str]:
    """The candidate first, then the other models by descending promotion metric."""
    candidate = f"model_v{evaluation.version}"
    others = sorted(
        (m for m in evaluation.models if m != candidate), key=lambda m: -evaluation.models[m].get(evaluation.metric, 0)
    )
    return ([candidate] if candidate in evaluation.models else []) + others


def offline_metrics(evaluation: Evaluation) -> str:
    """One panel per metric, a bar per model: the candidate against the champion and the baselines."""
    models = _model_order(evaluation)
    metrics = [m for m in METRICS if any(m in evaluation.models[x] for x in models)]
    fig, axes = _figure(2.4 * len(metrics), 2.8, cols=len(metrics))
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(models))]
    for ax, metric in zip(axes, metrics, strict=True):
        values = [evaluation.models[m].get(metric, math.nan) for m in models]
        bars = ax.bar(range(len(models)), values, color=colours)
        ax.bar_label(bars, labels=["n/a" if math.isnan(v) else f"{v:.3f}" for v in values], fontsize=7, padding=2)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
        ax.set_title(metric)
        ax.set_ylim(0, max([v for v in values if not math.isnan(v)] + [0.01]) * 1.2)
        ax.grid(axis="x", visible=False)
    return to_svg(fig, "offline-metrics")


def ranking_curves(evaluation: Evaluation) -> str:
    """NDCG@K and HR@K against K (log scale), one line per model."""
    fig, (ndcg_ax, hr_ax) = _figure(8, 3.2, cols=2)
    for i, name in enumerate(m for m in _model_order(evaluation) if m in evaluation.curves):
        curve = evaluation.curves[name]
        style: dict[str, Any] = {"color": PALETTE[i % len(PALETTE)], "marker": "o", "markersize": 3, "label": name}
        ndcg_ax.plot(curve.k, curve.ndcg, **style)
        hr_ax.plot(curve.k, curve.hr, **style)
    for ax, title in ((ndcg_ax, "NDCG@K"), (hr_ax, "HR@K")):
        ax.set_xscale("log")
        ax.set_xlabel("K (list length)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ks = sorted({k for c in evaluation.curves.values() for k in c.k})
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
    hr_ax.legend(fontsize=7, loc="lower right")
    return to_svg(fig, "ranking-curves")


def training_curves(runs: Sequence[TrainingRun]) -> str:
    """Training loss and validation NDCG@10 per epoch, a line per model and version; the best epoch marked."""
    fig, (loss_ax, val_ax) = _figure(8, 3.2, cols=2)
    for i, run in enumerate(runs):
        colour = PALETTE[i % len(PALETTE)]
        label = f"v{run.version} {run.model}"
        epochs = [p.epoch for p in run.epochs]
        loss_ax.plot(epochs, [p.loss for p in run.epochs], color=colour, marker="o", markersize=3, label=label)
        scored = [(p.epoch, p.val_ndcg) for p in run.epochs if p.val_ndcg is not None]
        if scored:
            xs, ys = zip(*scored, strict=True)
            val_ax.plot(xs, ys, color=colour, marker="o", markersize=3, label=label)
            best = max(range(len(ys)), key=lambda j: ys[j])
            val_ax.plot([xs[best]], [ys[best]], marker="*", markersize=11, color=colour, linestyle="none")
    loss_ax.set_title("training loss")
    val_ax.set_title("validation NDCG@10 (★ best epoch, kept)")
    for ax in (loss_ax, val_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.legend(fontsize=7)
    return to_svg(fig, "training-curves")


def experiment_variants(outcome: ExperimentOutcome, confidence: float = CONFIDENCE) -> str:
    """CTR and conversion rate per variant with their Wald intervals; NDCG@10 of clicks per variant."""
    res = outcome.results
    variants = res.variants
    fig, axes = _figure(9, 0.6 + 0.5 * len(variants) + 0.8, cols=3)
    names = [f"{v.name} (v{v.model_version})" for v in variants]
    ys = list(range(len(variants)))
    colours = [PALETTE[0] if v.name == res.control else PALETTE[1] for v in variants]
    rates: list[tuple[str, list[tuple[float, RateInterval | None]]]] = [
        (f"CTR, {confidence:.0%} interval", [(v.ctr, v.ctr_interval) for v in variants]),
        (
            f"conversion rate, {confidence:.0%} interval",
            [(v.conversion_rate, v.conversion_rate_interval) for v in variants],
        ),
    ]
    for ax, (title, points) in zip(axes[:2], rates, strict=True):
        for y, (value, ci), colour in zip(ys, points, colours, strict=True):
            err = None if ci is None else [[max(value - ci.low, 0)], [max(ci.high - value, 0)]]
            ax.errorbar(value, y, xerr=err, fmt="o", color=colour, capsize=4)
            ax.annotate(f"{value:.1%}", (value, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
        ax.set_title(title)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:.1%}")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    # NDCG@10 has no per-variant interval (only the difference's, in the table): bars from zero, not a zoom.
    ndcg = axes[2]
    bars = ndcg.barh(ys, [v.ndcg_at_10 for v in variants], color=colours)
    ndcg.bar_label(bars, labels=[f"{v.ndcg_at_10:.4f}" for v in variants], fontsize=7, padding=2)
    ndcg.set_xlim(0, max([v.ndcg_at_10 for v in variants] + [0.01]) * 1.3)
    ndcg.set_title("NDCG@10 of clicks")
    ndcg.grid(axis="y", visible=False)
    for i, ax in enumerate(axes):
        ax.set_yticks(ys, names if i == 0 else [""] * len(ys))
        ax.set_ylim(-0.7, len(variants) - 0.3)
        ax.invert_yaxis()
    return to_svg(fig, "experiment")


def latency_percentiles(endpoints: Sequence[EndpointStats]) -> str:
    """p50 / p95 / p99 (ms) per endpoint of the last load test, grouped bars."""
    rows = [e for e in endpoints if e.requests > 0]
    fig, (ax,) = _figure(max(5.0, 1.6 * len(rows) + 2), 3.2)
    width = 0.25
    for j, (label, attr) in enumerate((("p50", "p50"), ("p95", "p95"), ("p99", "p99"))):
        xs = [i + (j - 1) * width for i in range(len(rows))]
        values = [getattr(r, attr) for r in rows]
        bars = ax.bar(xs, values, width, label=label, color=PALETTE[j])
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(rows)), [f"{r.method} {r.name}".strip() for r in rows], rotation=15, ha="right")
    ax.set_ylabel("ms")
    ax.set_title("latency percentiles per endpoint")
    ax.legend(fontsize=7)
    ax.grid(axis="x", visible=False)
    return to_svg(fig, "latency")


def stage_times(stages: dict[str, float]) -> str:
    """Where the demo's time went: one horizontal bar per stage."""
    names = list(stages)
    fig, (ax,) = _figure(8, 0.5 + 0.3 * len(names))
    bars = ax.barh(range(len(names)), [stages[n] for n in names], color=PALETTE[0])
    ax.bar_label(bars, labels=[f"{stages[n]:.1f}s" for n in names], fontsize=7, padding=2)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.grid(axis="y", visible=False)
    return to_svg(fig, "stages")
