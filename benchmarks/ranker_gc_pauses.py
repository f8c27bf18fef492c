"""Pauses of Python's cyclic garbage collector in a ranker worker, with and without ``gc.freeze()``.

    make demo        # once: trains and promotes a model under var/demo
    .venv/bin/python benchmarks/ranker_gc_pauses.py [--data-dir var/demo] [--requests 6000]

The ranker's lifespan freezes what start-up built (the model's tables, the catalogue, the app), so a
full (generation 2) collection scans only what requests made since.  This builds the ranker app as
``scalerec serve`` does, sends ``--requests`` GET /v1/recommendations for random users of the demo's
shop straight into its ASGI callable after as many warm-up requests, and times every collection with
``gc.callbacks``.  The floor is the same run with everything unfrozen again (``gc.unfreeze()`` after
start-up): what the collector costs without the freeze.  Printed per arm: collections and their
mean and longest pause per generation, the request latency percentiles in process, and the ratio
of the longest full-collection pause frozen to not frozen (lower is better).
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from inprocess import request
from scalerec_ranker.config import RankerSettings
from scalerec_ranker.main import create_app


def run(data_dir: Path, n: int, users: int, freeze: bool) -> tuple[dict[int, list[float]], list[float]]:
    settings = RankerSettings(data_dir=data_dir, model_repository=data_dir / "model_repository", auth="disabled")
    app = create_app(settings)
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append((time.perf_counter() - started[0]) * 1000)

    async def load(count: int) -> list[float]:
        took = []
        for _ in range(count):
            t = time.perf_counter()
            query = f"user_id=u{random.randrange(users):05d}&k=10".encode()
            status, body = await request(app, "GET", "/v1/recommendations", query=query)
            if status != 200:
                raise SystemExit(f"HTTP {status}: {body[:300]!r}")
            took.append((time.perf_counter() - t) * 1000)
        return took

    with TestClient(app) as client:
        if not freeze:
            gc.unfreeze()
        client.portal.call(load, n)  # warm-up: every user's state cached, every code path taken
        gc.callbacks.append(timed)
        try:
            took = client.portal.call(load, n)
        finally:
            gc.callbacks.remove(timed)
    return pauses, sorted(took)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("var/demo"))
    ap.add_argument("--requests", type=int, default=6000, help="measured requests per arm (as many warm it up)")
    ap.add_argument("--users", type=int, default=3000, help="user ids u00000.. asked for")
    args = ap.parse_args()
    print(f"{args.requests:,} requests per arm after as many to warm up\n")
    print("| arm | gen | collections | mean ms | max ms | request p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|")
    longest: dict[bool, float] = {}
    for name, freeze in (("floor: no freeze", False), ("ranker: frozen at start-up", True)):
        pauses, took = run(args.data_dir, args.requests, args.users, freeze)
        longest[freeze] = max(pauses[2], default=0.0)
        p50, p99 = took[len(took) // 2], took[int(len(took) * 0.99)]
        for gen, times in pauses.items():
            if times:
                print(
                    f"| {name} | {gen} | {len(times)} | {sum(times) / len(times):.2f} | {max(times):.2f} "
                    f"| {p50:.2f} | {p99:.2f} | {took[-1]:.2f} |"
                )
    if longest[False] and longest[True]:
        print(f"\nlongest full collection, frozen / not frozen: {longest[True] / longest[False]:.2f}")
    else:
        print("\nno full collection in one of the arms: more --requests")


if __name__ == "__main__":
    main()
