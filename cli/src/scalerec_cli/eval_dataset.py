"""``scalerec eval-dataset``: compare every model on a public dataset under leave-one-out.

Example::

    scalerec eval-dataset --path ../shared/data/ml-latest-small --format movielens-csv --json out.json

Prints one row per model (HR@10, NDCG@10, train seconds) and optionally writes
``{"dataset", "protocol", "seed", "config", "models": {name: {"hr@10", "ndcg@10", "train_seconds",
"params"}}}``; a neural model's params say its epochs (best, run, maximum) and seed.  Training
runs a fixed number of epochs with early stopping on validation and seeds everything, so the
same command on the same data prints the same table on any machine (within floating-point noise).
The protocol is described in :mod:`scalerec_models.benchmark`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from scalerec_models.benchmark import CANDIDATES_K, MODELS, PROTOCOL, ModelResult, run_benchmark
from scalerec_models.config import SIZES, model_config
from scalerec_models.data import leave_one_out
from scalerec_models.datasets import FORMATS, load_dataset


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval-dataset`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "eval-dataset",
        help="offline HR@10/NDCG@10 of every model on a dataset (leave-one-out, full ranking)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--path", required=True, type=Path, help="dataset folder or its ratings file")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt", help="file format of the dataset")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS),
        metavar="MODEL",
        help=f"models to run (default: all of {', '.join(MODELS)}); commas also separate",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of every model (default 0)")
    p.add_argument("--size", default="small", choices=sorted(SIZES), help="neural model size (default small)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch progress on stderr")
    p.set_defaults(func=run)
    return p


def _row(name: str, hr: str, ndcg: str, secs: str) -> str:
    return f"{name:<12} {hr:>8} {ndcg:>8} {secs:>9}"


def run(args: argparse.Namespace) -> int:
    """Exit code 0 on success, 2 when the dataset or the arguments are unusable."""
    # Per-epoch progress goes to stderr unless --quiet (the CLI's root logger may already be configured).
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    logging.getLogger("scalerec_models").setLevel(logging.WARNING if args.quiet else logging.INFO)
    models = [m for chunk in args.models for m in chunk.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        print(f"eval-dataset: unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        ds = load_dataset(args.path, args.fmt)
        split = leave_one_out(ds.interactions, ds.item_features)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"eval-dataset: cannot load {args.path} as {args.fmt}: {exc}", file=sys.stderr)
        return 2
    n_items = split.n_items - 2
    print(
        f"dataset {ds.name}: {len(split.train.users)} users, {n_items} items, {len(ds.interactions)} interactions, "
        f"{len(split.eval_users)} users evaluated"
    )
    print(_row("model", "HR@10", "NDCG@10", "train s"), flush=True)

    def show(res: ModelResult) -> None:
        print(
            _row(res.name, f"{res.metrics['hr@10']:.4f}", f"{res.metrics['ndcg@10']:.4f}", f"{res.train_seconds:.1f}"),
            flush=True,
        )

    cfg = model_config(args.size, seed=args.seed)
    try:
        results = run_benchmark(split, models, cfg, on_result=show)
    except ValueError as exc:
        print(f"eval-dataset: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    for res in results:
        recall = res.params.get(f"candidates_recall@{CANDIDATES_K}_val")
        if recall:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in recall.items() if k != "union_size")
            print(f"candidate recall@{CANDIDATES_K} (validation): {shown} ({recall['union_size']:.0f} in the union)")
    print(f"wall time {wall:.1f}s")
    if args.json:
        try:
            import torch

            runtime: dict[str, Any] = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
        except ImportError:  # baselines only: numpy and scipy
            runtime = {}
        report = {
            "dataset": ds.name,
            "protocol": PROTOCOL,
            "users": len(split.train.users),
            "items": n_items,
            "interactions": len(ds.interactions),
            "evaluated_users": len(split.eval_users),
            "seed": args.seed,
            "size": args.size,
            # What makes the numbers reproducible: fixed epochs (early-stopped on validation), seeds, kernels.
            "deterministic": cfg.deterministic,
            "time_budget_s": cfg.time_budget_s,
            "config": cfg.to_json(),
            **runtime,
            "wall_seconds": round(wall, 1),
            "models": {r.name: r.as_json() for r in results},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0
