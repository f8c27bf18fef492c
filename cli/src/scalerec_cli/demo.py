"""``scalerec demo``: a synthetic shop through all five services, end to end, with a report.

collector (HTTP) → bus → preprocessor → store → trainer → model repository →
evaluator (gate) → ranker (hot swap) → recommendations with reasons; then the rest of the
shop's history arrives, a second version trained on all of it passes the offline gate as a
challenger, and an online experiment (champion v1 against challenger v2, half the users each)
runs on simulated shoppers (:mod:`scalerec_cli.simulate`) until the evaluator decides.  The
experiment's result is written to ``<data dir>/experiment.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from scalerec_events.experiments import ExperimentDecision, ExperimentOut, ExperimentOutcome, Interval
from scalerec_events.models import Event
from scalerec_synthetic import Shop, ShopConfig, generate_shop, shop_summary

from scalerec_cli import driver
from scalerec_cli.cluster import LocalCluster
from scalerec_cli.report import DEMO_REPORT_FILE, EXPERIMENT_FILE
from scalerec_cli.report.models import (
    BatchCounts,
    DemoConfig,
    DemoReport,
    DemoResult,
    Evaluation,
    ExperimentSkipped,
    Ingested,
    Sample,
    TrainSummary,
)
from scalerec_cli.simulate import simulate

# The first model is trained on this share of the shop's history (oldest first), the challenger on all of it.
FIRST_SHARE = 0.6


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="Run the whole pipeline on a synthetic shop and print a report")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=1500)
    p.add_argument("--events-per-user", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--data-dir", type=Path, default=Path("var/demo"), help="Embedded backends' files (wiped first)")
    p.add_argument("--keep", action="store_true", help="Do not wipe --data-dir first")
    p.add_argument("--model-size", default="demo", choices=["demo", "small", "large"])
    p.add_argument(
        "--json",
        type=Path,
        help="Also write the report as JSON to this path (it is always kept as DATA_DIR/report.json)",
    )
    p.add_argument(
        "--html",
        type=Path,
        help="Write the HTML report here (default DATA_DIR/report.html; `scalerec report` rebuilds it later)",
    )
    p.add_argument("--no-html", action="store_true", help="Write no HTML report")
    p.add_argument(
        "--experiment-requests",
        type=int,
        default=4000,
        help="Simulated recommendation requests in the online experiment (0: no second model, no experiment)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="Extra environment for the services (e.g. BUS_URL=kafka://127.0.0.1:19092)",
    )
    p.set_defaults(func=run)


class Stages:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.console.print(f"[bold cyan]▶ {name}[/]")
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 2)
        self.console.print(f"  [green]done[/] in {self.seconds[name]:.1f}s")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


class TrainingBar:
    """One bar per model being trained, advanced from the job's per-epoch progress (GET /v1/train/{id}).

    The bar's total is the most epochs the run may take; early stopping or the time budget can end
    it sooner, and the bar is then completed at the epoch where training stopped.
    """

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[str, TaskID] = {}
        self.epochs: dict[str, int] = {}

    def update(self, job: dict[str, Any]) -> None:
        latest: dict[str, dict[str, Any]] = {}
        for epoch in job.get("progress", []):
            latest[epoch["model"]] = epoch
        for model, epoch in latest.items():
            if model not in self.tasks:
                # A later model starting means the earlier ones are done: close their bars at their last epoch.
                self._close()
                self.tasks[model] = self.bar.add_task(model, total=epoch["max_epochs"])
            ndcg = epoch.get("val_ndcg_at_10")
            detail = f"loss {epoch['loss']:.4f}" + ("" if ndcg is None else f", val NDCG@10 {ndcg:.4f}")
            self.epochs[model] = epoch["epoch"]
            self.bar.update(self.tasks[model], completed=epoch["epoch"], description=f"{model} ({detail})")
        if job.get("status") in ("succeeded", "failed"):
            self._close()

    def _close(self) -> None:
        for model, task in self.tasks.items():
            self.bar.update(task, total=self.epochs.get(model, 0), completed=self.epochs.get(model, 0))


def run(args: argparse.Namespace) -> int:
    console = Console()
    stages = Stages(console)
    if args.data_dir.exists() and not args.keep:
        shutil.rmtree(args.data_dir)
    env = dict(e.split("=", 1) for e in args.env)
    env.setdefault("MODEL_SIZE", args.model_size)
    env.setdefault("TRAIN_AFTER_EXAMPLES", "0")
    # The demo trades reproducibility for a bounded wait: at most a minute of training per model.
    env.setdefault("TIME_BUDGET_S", "60")
    # The demo runs open on loopback; a deployment sets API_KEYS (see README, "Access").
    env.setdefault("AUTH", "disabled")
    config = DemoConfig(
        users=args.users,
        items=args.items,
        events_per_user=args.events_per_user,
        seed=args.seed,
        model_size=env["MODEL_SIZE"],
        backends=", ".join(f"{k}={env[k]}" for k in sorted(env) if k.endswith("_URL")) or "embedded",
    )
    if args.experiment_requests:
        # The second version passes the offline gate as a challenger only: the experiment decides.
        env.setdefault("PROMOTION", "online")
        env.setdefault("MIN_EXPERIMENT_IMPRESSIONS", str(max(100, args.experiment_requests // 8)))
    cluster = LocalCluster(args.data_dir, env=env)
    with stages.stage("generate a synthetic shop"):
        shop = generate_shop(
            ShopConfig(users=args.users, items=args.items, events_per_user=args.events_per_user, seed=args.seed)
        )
        data = shop_summary(shop)
        console.print(f"  {len(shop.users):,} users, {len(shop.items):,} items, {len(shop.events):,} events")
    try:
        with stages.stage("start the five services"):
            cluster.start_all()
            console.print("  " + ", ".join(f"{s} :{cluster.ports[s]}" for s in cluster.services))
            if env.get("AUTH") == "disabled":
                console.print(
                    "  AUTH=disabled: open APIs on loopback for the demo (services refuse to start so elsewhere)"
                )
        result = _pipeline(cluster, shop, stages, console, args.experiment_requests)
    finally:
        cluster.stop_all()
    report = DemoReport(
        config=config,
        data=data,
        stages_seconds=stages.seconds,
        total_seconds=round(sum(stages.seconds.values()), 2),
        result=result,
    )
    _print_report(console, report)
    _write_reports(console, report, args)
    return 0 if report.model_beats_popularity() else 1


def _write_reports(console: Console, report: DemoReport, args: argparse.Namespace) -> None:
    """JSON into the data folder (what `scalerec report` reads), optionally a copy, then the HTML page."""
    text = report.model_dump_json(indent=2)
    for path in [args.data_dir / DEMO_REPORT_FILE] + ([args.json] if args.json else []):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        console.print(f"JSON report written to {path}")
    if not args.no_html:
        from scalerec_cli.report import command

        html = command.build(args.data_dir, out=args.html)
        console.print(f"[bold]HTML report written to {html.resolve()}[/]")


def _ingest(cluster: LocalCluster, events: list[Event], console: Console, accepted_before: int) -> int:
    """Send ``events`` through the collector and wait until the preprocessor stored them; the total accepted."""
    with _progress(console) as bar:
        t_events = bar.add_task("events", total=len(events))
        sent = asyncio.run(
            driver.post_batches(
                f"{cluster.url('collector')}/v1/events",
                "events",
                events,
                1000,
                progress=lambda n: bar.advance(t_events, n),
            )
        )
    accepted = accepted_before + sent["accepted"]
    with _progress(console) as bar:
        task = bar.add_task("stored", total=accepted)
        driver.wait_preprocessed(cluster.url("preprocessor"), accepted, progress=lambda n: bar.advance(task, n))
    return accepted


def _pipeline(
    cluster: LocalCluster, shop: Shop, stages: Stages, console: Console, experiment_requests: int = 0
) -> DemoResult:
    first = shop.events[: int(len(shop.events) * FIRST_SHARE)] if experiment_requests else shop.events
    rest = shop.events[len(first) :]
    with stages.stage("send the catalogue and events through the collector (HTTP)"), _progress(console) as bar:
        t_items = bar.add_task("items", total=len(shop.items))
        items = asyncio.run(
            driver.post_batches(
                f"{cluster.url('collector')}/v1/items",
                "items",
                shop.items,
                500,
                progress=lambda n: bar.advance(t_items, n),
            )
        )
        t_events = bar.add_task("events", total=len(first))
        events = asyncio.run(
            driver.post_batches(
                f"{cluster.url('collector')}/v1/events",
                "events",
                first,
                1000,
                progress=lambda n: bar.advance(t_events, n),
            )
        )
        ingested = Ingested(items=BatchCounts.model_validate(items), events=BatchCounts.model_validate(events))
    with stages.stage("wait for the preprocessor (dedupe, histories, features, examples)"), _progress(console) as bar:
        task = bar.add_task("stored", total=events["accepted"])
        stats = driver.wait_preprocessed(
            cluster.url("preprocessor"), events["accepted"], progress=lambda n: bar.advance(task, n)
        )
        preprocessor = {k: v for k, v in stats.items() if k != "workers"}
    with stages.stage("train (ranking transformer + two-tower retrieval), export ONNX"), _progress(console) as bar:
        job = driver.train(cluster.url("trainer"), on_update=TrainingBar(bar).update)
        train = TrainSummary(seconds=job["seconds"], metrics=job["metrics"])
    with stages.stage("evaluate on the time holdout and gate the promotion"):
        evaluation = Evaluation.model_validate(driver.wait_report(cluster.url("evaluator"), job["version"]))
        console.print(f"  {evaluation.decision}")
    if evaluation.promoted:
        with stages.stage("ranker swaps to the promoted model"):
            driver.wait_serving(cluster.url("ranker"), job["version"])
    experiment = None
    if experiment_requests and rest:
        experiment = _experiment(cluster, shop, rest, stages, console, ingested.events.accepted, experiment_requests)
    with stages.stage("ask the ranker"):
        users = [shop.users[i] for i in (0, len(shop.users) // 3, 2 * len(shop.users) // 3)]
        answers = [driver.recommend(cluster.url("ranker"), u, 5, device="mobile") for u in users]
        answers.append(driver.recommend(cluster.url("ranker"), "newcomer-without-history", 5))
    return DemoResult(
        ingested=ingested,
        preprocessor=preprocessor,
        version=job["version"],
        train=train,
        evaluation=evaluation,
        experiment=experiment,
        samples=[Sample.model_validate(a) for a in answers],
    )


def _experiment(
    cluster: LocalCluster,
    shop: Shop,
    rest: list[Event],
    stages: Stages,
    console: Console,
    accepted_before: int,
    requests: int,
) -> ExperimentOutcome | ExperimentSkipped:
    with stages.stage(f"the rest of the history ({len(rest):,} events) through the collector"):
        _ingest(cluster, rest, console, accepted_before)
    with stages.stage("train a second version on all of it; the offline gate"):
        job = driver.train(cluster.url("trainer"))
        second = driver.wait_report(cluster.url("evaluator"), job["version"])
        console.print(f"  v{job['version']}: {second['decision']}")
    evaluator = cluster.url("evaluator")
    champion = httpx.get(f"{evaluator}/v1/reports", timeout=30).json()["champion"]
    if champion is None or champion == job["version"]:
        console.print(
            f"  [yellow]no experiment:[/] the champion is {champion or 'none'}, nothing to test v{job['version']} against"
        )
        if champion is not None:  # this version was promoted: the samples must come from it, not the one before
            with stages.stage(f"ranker swaps to v{champion}"):
                driver.wait_serving(cluster.url("ranker"), champion)
        return ExperimentSkipped(skipped=f"champion {champion}, candidate v{job['version']}")
    spec = {
        "name": f"v{job['version']} (all data) vs v{champion}",
        "variants": [
            {"name": "champion", "model_version": champion, "share": 0.5},
            {"name": "challenger", "model_version": job["version"], "share": 0.5},
        ],
    }
    with stages.stage(f"online experiment: {requests:,} simulated shoppers, half on each version"):
        created = httpx.post(f"{evaluator}/v1/experiments", json=spec, timeout=60)
        if created.status_code != 201:
            raise driver.PipelineError(f"experiment not created: HTTP {created.status_code}: {created.text[:300]}")
        exp_id = created.json()["experiment_id"]
        driver.poll_until(
            lambda: httpx.get(f"{cluster.url('ranker')}/v1/model", timeout=10).json()["experiment_id"] == exp_id,
            60,
            0.2,
            "the ranker to follow the experiment",
        )
        with _progress(console) as bar:
            task = bar.add_task("requests", total=requests)
            traffic = asyncio.run(
                simulate(
                    cluster.url("ranker"),
                    cluster.url("collector"),
                    shop,
                    requests,
                    progress=lambda n: bar.advance(task, n),
                )
            )
        console.print(f"  {traffic.requests:,} answers, {traffic.clicks:,} clicks, {dict(traffic.per_variant)}")

        def counted() -> dict[str, Any] | None:
            res = httpx.get(f"{evaluator}/v1/experiments/{exp_id}", timeout=60).json()["results"]
            variants = res["variants"]
            done = sum(v["impressions"] for v in variants) >= traffic.requests
            return res if done and sum(v["clicks"] for v in variants) >= traffic.clicks else None

        driver.poll_until(counted, 120, 1.0, "the evaluator to count every impression and click")
        decided = httpx.post(f"{evaluator}/v1/experiments/{exp_id}/decide", timeout=60)
        final = httpx.get(f"{evaluator}/v1/experiments/{exp_id}", timeout=60)
    for r in (decided, final):
        if r.status_code != 200:
            raise driver.PipelineError(f"{r.request.method} {r.request.url}: HTTP {r.status_code}: {r.text[:300]}")
    shown = ExperimentOut.model_validate_json(final.content)
    if shown.results is None:
        raise driver.PipelineError(f"experiment {exp_id} was decided but the evaluator has no results for it")
    outcome = ExperimentOutcome(
        experiment=shown.experiment,
        results=shown.results,
        decision=ExperimentDecision.model_validate_json(decided.content),
    )
    (cluster.data_dir / EXPERIMENT_FILE).write_text(outcome.model_dump_json(indent=2))
    return outcome


def _print_experiment(console: Console, exp: ExperimentOutcome) -> None:
    res = exp.results
    t = Table(title=f"Online experiment {exp.experiment.experiment_id}: {exp.experiment.name}")
    for col in ("variant", "version", "users", "answers", "CTR", "CTR 95% CI", "conversion", "NDCG@10"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for v in res.variants:
        bounds = v.ctr_interval
        t.add_row(
            v.name,
            f"v{v.model_version}",
            f"{v.users:,}",
            f"{v.impressions:,}",
            f"{v.ctr:.4f}",
            "no data" if bounds is None else f"[{bounds.low:.4f}, {bounds.high:.4f}]",
            f"{v.conversion_rate:.4f}",
            f"{v.ndcg_at_10:.4f}",
        )
    console.print(t)

    def ci(i: Interval | None) -> str:
        if i is None:
            return "no data"
        return f"{i.diff:+.4f} [{i.low:+.4f}, {i.high:+.4f}] p={i.p_value:.3g}"  # .2g printed 0.0505 as 0.05

    for v in res.variants:
        if v.name != res.control:
            console.print(f"{v.name} minus {res.control}, 95% CI:")
            console.print(f"  CTR {ci(v.ctr_vs_control)}")
            console.print(f"  conversion {ci(v.conversion_rate_vs_control)}")
            console.print(f"  NDCG@10 {ci(v.ndcg_at_10_vs_control)}")
    srm = res.srm
    console.print(f"sample-ratio check: chi-square p={srm.p_value:.3g} ({'MISMATCH' if srm.mismatch else 'ok'})")
    d = exp.decision
    console.print(
        f"decision: {'[green]promoted ' + str(d.winner) if d.promoted else '[yellow]kept the champion'}[/] — {d.reason}"
    )


def _print_report(console: Console, report: DemoReport) -> None:
    res = report.result
    data = Table(title="Data", show_header=False)
    for k, v in report.data.items():
        data.add_row(str(k), f"{v:,.3f}" if isinstance(v, float) else f"{v:,}")
    console.print(data)
    times = Table(title="Time per stage")
    times.add_column("stage")
    times.add_column("seconds", justify="right")
    for stage, seconds in report.stages_seconds.items():
        times.add_row(stage, f"{seconds:.1f}")
    times.add_row("[bold]total", f"[bold]{report.total_seconds:.1f}")
    console.print(times)
    ev = res.evaluation
    metrics = Table(
        title=f"Offline metrics on the time holdout ({ev.users} users, {ev.items} items): the model's full ranking, "
        "and the answers it would serve (candidates, ranking, category cap)"
    )
    # One column per model (at most four): the table fits an 80-column terminal.
    models = sorted(ev.models.items(), key=lambda kv: -kv[1]["ndcg@10"])
    metrics.add_column("metric")
    for name, _ in models:
        metrics.add_column(name, justify="right")
    for row in ("ndcg@10", "hr@10", "mrr", "coverage@10", "served_ndcg@10", "served_hr@10", "candidate_recall"):
        metrics.add_row(row, *(f"{m[row]:.4f}" if row in m else "" for _, m in models))
    console.print(metrics)
    console.print(f"gate: {'[green]promoted' if ev.promoted else '[red]not promoted'}[/] — {ev.decision}")
    if isinstance(res.experiment, ExperimentOutcome):
        _print_experiment(console, res.experiment)
    for s in res.samples:
        flag = f" [yellow](fallback: {s.fallback_reason})[/]" if s.fallback else ""
        model = f"model v{s.model_version}" if s.model_version is not None else "no model"
        t = Table(title=f"user {s.user_id} — {model}, scorer {s.scorer}{flag}")
        for col in ("item", "title", "category", "source", "reason"):
            t.add_column(col)
        for it in s.items:
            t.add_row(it.item_id, it.title[:40], it.category, it.source, it.reason[:60])
        console.print(t)
