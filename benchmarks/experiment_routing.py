"""What experiment routing costs the ranker's request path, in process, interleaved in one run.

    make demo        # once: leaves two model versions and a running experiment under var/demo
    .venv/bin/python benchmarks/experiment_routing.py [--data-dir var/demo] [--rounds 10] [--requests 300]

The ranker app is built as ``scalerec serve`` builds it (embedded backends over the demo's data), and
``Recommender.recommend`` is timed for random users in interleaved blocks, so a machine busy with
other work slows every arm alike:

* ``champion only`` — no experiment: the floor;
* ``routing, one model`` — the experiment's routing (salted hash per user, dispatch per variant) with
  every variant pointing at the champion's model: what routing itself costs;
* ``everyone on <variant>`` — one variant's model for all: what the versions cost by themselves (the
  champion's row is the floor again: how far apart two identical arms land is the run's noise);
* ``the experiment`` — the real thing (half the users on each version here).

Printed: the median CPU µs per request of each over the rounds (``time.process_time``: every thread of
the process, not the wall clock, which a shared machine moves far more), its ratio to the floor, and
the assignment alone (hash + bisect) per user.
HTTP, JSON and the bus are outside the loop, so the ratio is the routing's share of the ranker's own
work: an upper bound of its share of what a client sees (``benchmarks/ranker_throughput.py``).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

from fastapi.testclient import TestClient
from scalerec_ranker.config import RankerSettings
from scalerec_ranker.main import create_app


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, default=Path("var/demo"))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--requests", type=int, default=300, help="per block")
    ap.add_argument("--users", type=int, default=3000)
    args = ap.parse_args()
    settings = RankerSettings(
        data_dir=args.data_dir, model_repository=args.data_dir / "model_repository", auth="disabled", workers=1
    )
    with TestClient(create_app(settings)) as client:
        models = client.app.state.models  # type: ignore[attr-defined]
        rec = client.app.state.recommender  # type: ignore[attr-defined]
        deadline = time.monotonic() + 60
        while models.routing is None:  # the experiment arrives over the bus
            if time.monotonic() > deadline:
                print(f"no running experiment under {args.data_dir}: run `make demo` first (it leaves one running)")
                return 2
            time.sleep(0.2)
        routing = models.routing
        rng = random.Random(1)

        async def block(n: int) -> float:
            users = [f"u{rng.randrange(args.users):05d}" for _ in range(n)]
            started = time.process_time()  # CPU of the whole process: other jobs on the machine change it little
            for u in users:
                await rec.recommend(u, 10, None, None)
            return (time.process_time() - started) / n * 1e6

        from scalerec_ranker.models import Routing

        champion = models.current
        same = Routing(routing.experiment, routing.assignment, dict.fromkeys(routing.models, champion))
        arms: dict[str, tuple[object, object]] = {"champion only (floor)": (champion, None)}
        arms["routing, one model"] = (champion, same)
        for name, model in routing.models.items():
            arms[f"everyone on {name} v{model.version}"] = (model, None)
        arms["the experiment"] = (champion, routing)
        times: dict[str, list[float]] = {name: [] for name in arms}
        client.portal.call(block, 100)  # warm-up
        order = list(arms)
        for _ in range(args.rounds):
            rng.shuffle(order)  # no arm always first (cold caches) or last
            for name in order:
                current, route = arms[name]
                models.current, models.routing = current, route
                times[name].append(client.portal.call(block, args.requests))
        models.current, models.routing = champion, routing
        assign = routing.assignment
        ids = [f"u{i:05d}" for i in range(100_000)]
        started = time.perf_counter()
        for u in ids:
            assign.variant_of(u)
        hash_us = (time.perf_counter() - started) / len(ids) * 1e6
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"experiment routing: {args.rounds} rounds x {args.requests} requests each way, load average {load}")
    floor = statistics.median(times["champion only (floor)"])
    print(f"{'':30}{'CPU µs/req':>12}{'ratio':>8}")
    for name, values in times.items():
        print(f"{name:30}{statistics.median(values):12.0f}{statistics.median(values) / floor:8.3f}")
    print(f"{'assignment alone (per user)':30}{hash_us:12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
