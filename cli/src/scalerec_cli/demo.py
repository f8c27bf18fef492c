"""``scalerec demo``: a synthetic shop through all five services, end to end, with a report.

collector (HTTP) → bus → preprocessor → store → trainer → model repository →
evaluator (gate) → ranker (hot swap) → recommendations with reasons.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scalerec_cli import driver
from scalerec_cli.cluster import LocalCluster
from scalerec_cli.synthetic import ShopConfig, generate_shop, shop_summary


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="Run the whole pipeline on a synthetic shop and print a report")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=1500)
    p.add_argument("--events-per-user", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--data-dir", type=Path, default=Path("var/demo"), help="Embedded backends' files (wiped first)")
    p.add_argument("--keep", action="store_true", help="Do not wipe --data-dir first")
    p.add_argument("--model-size", default="demo", choices=["demo", "small", "large"])
    p.add_argument("--json", type=Path, help="Also write the report as JSON to this path")
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
    report: dict[str, Any] = {}
    cluster = LocalCluster(args.data_dir, env=env)
    with stages.stage("generate a synthetic shop"):
        shop = generate_shop(
            ShopConfig(users=args.users, items=args.items, events_per_user=args.events_per_user, seed=args.seed)
        )
        report["data"] = shop_summary(shop)
        console.print(f"  {len(shop.users):,} users, {len(shop.items):,} items, {len(shop.events):,} events")
    try:
        with stages.stage("start the five services"):
            cluster.start_all()
            console.print("  " + ", ".join(f"{s} :{cluster.ports[s]}" for s in cluster.services))
            if env.get("AUTH") == "disabled":
                console.print(
                    "  AUTH=disabled: open APIs on loopback for the demo (services refuse to start so elsewhere)"
                )
        report["result"] = _pipeline(cluster, shop, stages, console)
    finally:
        cluster.stop_all()
    report["stages_seconds"] = stages.seconds
    report["total_seconds"] = round(sum(stages.seconds.values()), 2)
    _print_report(console, report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        console.print(f"report written to {args.json}")
    model = report["result"]["evaluation"]["models"]
    mine = model[f"model_v{report['result']['version']}"]["ndcg@10"]
    return 0 if mine > model["popularity"]["ndcg@10"] else 1


def _pipeline(cluster: LocalCluster, shop: Any, stages: Stages, console: Console) -> dict[str, Any]:
    out: dict[str, Any] = {}
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
        t_events = bar.add_task("events", total=len(shop.events))
        events = asyncio.run(
            driver.post_batches(
                f"{cluster.url('collector')}/v1/events",
                "events",
                shop.events,
                1000,
                progress=lambda n: bar.advance(t_events, n),
            )
        )
        out["ingested"] = {"items": items, "events": events}
    with stages.stage("wait for the preprocessor (dedupe, histories, features, examples)"), _progress(console) as bar:
        task = bar.add_task("stored", total=events["accepted"])
        stats = driver.wait_preprocessed(
            cluster.url("preprocessor"), events["accepted"], progress=lambda n: bar.advance(task, n)
        )
        out["preprocessor"] = {k: v for k, v in stats.items() if k != "workers"}
    with stages.stage("train (ranking transformer + two-tower retrieval), export ONNX"):
        job = driver.train(cluster.url("trainer"))
        out["version"] = job["version"]
        out["train"] = {"seconds": job["seconds"], "metrics": job["metrics"]}
    with stages.stage("evaluate on the time holdout and gate the promotion"):
        evaluation = driver.wait_report(cluster.url("evaluator"), job["version"])
        out["evaluation"] = evaluation
        console.print(f"  {evaluation['decision']}")
    if evaluation["promoted"]:
        with stages.stage("ranker swaps to the promoted model"):
            driver.wait_serving(cluster.url("ranker"), job["version"])
    with stages.stage("ask the ranker"):
        users = [shop.users[i] for i in (0, len(shop.users) // 3, 2 * len(shop.users) // 3)]
        samples = [driver.recommend(cluster.url("ranker"), u, 5, device="mobile") for u in users]
        samples.append(driver.recommend(cluster.url("ranker"), "newcomer-without-history", 5))
        out["samples"] = samples
    return out


def _print_report(console: Console, report: dict[str, Any]) -> None:
    res = report["result"]
    data = Table(title="Data", show_header=False)
    for k, v in report["data"].items():
        data.add_row(str(k), f"{v:,.3f}" if isinstance(v, float) else f"{v:,}")
    console.print(data)
    times = Table(title="Time per stage")
    times.add_column("stage")
    times.add_column("seconds", justify="right")
    for k, v in report["stages_seconds"].items():
        times.add_row(k, f"{v:.1f}")
    times.add_row("[bold]total", f"[bold]{report['total_seconds']:.1f}")
    console.print(times)
    ev = res["evaluation"]
    metrics = Table(
        title=f"Offline metrics on the time holdout ({ev['users']} users, {ev['items']} items, full ranking)"
    )
    metrics.add_column("model")
    for col in ("ndcg@10", "hr@10", "mrr", "coverage@10"):
        metrics.add_column(col, justify="right")
    for name, m in sorted(ev["models"].items(), key=lambda kv: -kv[1]["ndcg@10"]):
        metrics.add_row(name, *(f"{m[c]:.4f}" for c in ("ndcg@10", "hr@10", "mrr", "coverage@10")))
    console.print(metrics)
    console.print(f"gate: {'[green]promoted' if ev['promoted'] else '[red]not promoted'}[/] — {ev['decision']}")
    for s in res["samples"]:
        flag = f" [yellow](fallback: {s['fallback_reason']})[/]" if s["fallback"] else ""
        t = Table(title=f"user {s['user_id']} — model v{s['model_version']}, scorer {s['scorer']}{flag}")
        for col in ("item", "title", "category", "source", "reason"):
            t.add_column(col)
        for it in s["items"]:
            t.add_row(it["item_id"], it["title"][:40], it["category"], it["source"], it["reason"][:60])
        console.print(t)
