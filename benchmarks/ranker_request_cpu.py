"""Where a ranker request's CPU goes, in process: the HTTP app around the recommender, and the recommender.

    make demo        # once: trains and promotes a model under var/demo
    .venv/bin/python benchmarks/ranker_request_cpu.py [--data-dir var/demo] [--rounds 8] [--requests 300]

``benchmarks/ranker_throughput.py`` measures what a client sees, over sockets and with a load generator
on the same two cores, which a shared machine moves by 10-20 % from one run to the next.  This one
measures CPU time of the process (``time.process_time``: every thread), which other jobs move much
less, so that a change to the request path can be judged by a few percent.  In interleaved blocks of
random users of the demo's shop, each request is sent straight into an ASGI callable (no sockets, no
server, no client):

* ``bare FastAPI, same body`` — the floor: a FastAPI app answering ``GET /v1/recommendations`` with
  one real answer of the ranker, the least an HTTP app can do for this route;
* ``ranker app`` — the ranker's app as ``scalerec serve`` builds it (embedded backends over the
  demo's data; middleware, telemetry, auth and query checks, the recommender, the answer's JSON);
* ``recommender alone`` — ``Recommender.recommend`` called directly (candidates, scoring, re-ranking,
  explanations, the impression): the ranker app minus its HTTP part.

Printed: the median over the rounds of CPU µs per request, the floor's ratio to each (1.0 = free), the
ranker app's HTTP part (its row minus the recommender's) and, for the recommender, the share of its CPU
spent in onnxruntime (timed around every ``run``).  Each worker's in-process user-state cache is warmed
for every user first; its entries expire after ``USER_STATE_TTL_SECONDS`` (30 s) like in service, so
later blocks also read the store for the users whose entry expired.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from fastapi.testclient import TestClient
from inprocess import App, request
from scalerec_ranker.config import RankerSettings
from scalerec_ranker.main import create_app


async def get(app: App, user: str) -> bytes:
    """One GET /v1/recommendations into ``app``'s ASGI callable; the body, after checking the status."""
    status, body = await request(app, "GET", "/v1/recommendations", query=f"user_id={user}&k=10".encode())
    if status != 200:
        raise RuntimeError(f"{user}: HTTP {status} {body[:300]!r}")
    return body


def floor_app(body: bytes) -> FastAPI:
    # Without FastAPI's telemetry, which the ranker's process-wide OpenTelemetry providers would turn on:
    # the bare app that ranker_throughput.py runs as its floor has none either.
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})

    @app.get("/v1/recommendations")
    async def recommendations(user_id: str, k: int = 10) -> Response:
        return Response(body, media_type="application/json")

    return app


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("var/demo"))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--requests", type=int, default=300, help="per block")
    ap.add_argument("--users", type=int, default=3000, help="user ids u00000.. asked for")
    args = ap.parse_args()
    repository = args.data_dir / "model_repository"
    if not any(repository.glob("scalerec_ranker/[0-9]*")):
        print(f"no model under {repository}: run `make demo` first")
        return 2
    settings = RankerSettings(data_dir=args.data_dir, model_repository=repository, auth="disabled", workers=1)
    with TestClient(create_app(settings)) as client:
        ranker: App = client.app  # type: ignore[assignment]
        rec = client.app.state.recommender  # type: ignore[attr-defined]
        deadline = time.monotonic() + 60
        while rec.models.current is None:  # the champion activates in the lifespan's background
            if time.monotonic() > deadline:
                print("the ranker activated no model within 60 s")
                return 2
            time.sleep(0.2)
        scorer = rec.scorer
        onnx_s = [0.0]
        run = getattr(scorer, "_infer", None)  # onnxruntime's run with its feeds: timed around every call
        if run is None:
            print(f"the scorer is {scorer.name}: this benchmark times the in-process onnxruntime scorer")
            return 2

        def timed(*a: Any, **kw: Any) -> Any:
            started = time.process_time()
            try:
                return run(*a, **kw)
            finally:
                onnx_s[0] += time.process_time() - started

        scorer._infer = timed
        rng = random.Random(1)
        users = [f"u{i:05d}" for i in range(args.users)]

        async def warm() -> bytes:
            body = b""
            for u in users:
                body = await get(ranker, u)
            return body

        floor = floor_app(client.portal.call(warm))

        async def block(arm: str, n: int) -> tuple[float, float]:
            asked = [rng.choice(users) for _ in range(n)]
            onnx_before = onnx_s[0]
            started = time.process_time()
            for u in asked:
                if arm == "recommender alone":
                    await rec.recommend(u, 10, None, None)
                else:
                    await get(floor if arm.startswith("bare") else ranker, u)
            cpu = time.process_time() - started
            return cpu / n * 1e6, (onnx_s[0] - onnx_before) / cpu

        arms = ["bare FastAPI, same body (floor)", "ranker app", "recommender alone"]
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        onnx: list[float] = []
        order = list(arms)
        for _ in range(args.rounds):
            rng.shuffle(order)  # no arm always first or last
            for arm in order:
                us, share = client.portal.call(block, arm, args.requests)
                times[arm].append(us)
                if arm == "recommender alone":
                    onnx.append(share)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"ranker request CPU, in process: {args.rounds} rounds x {args.requests} requests per arm, "
        f"{os.cpu_count()} cores, load average {load}"
    )
    floor_us = statistics.median(times[arms[0]])
    print(f"{'':34}{'CPU µs/req':>11}{'floor/this':>11}")
    for arm in arms:
        us = statistics.median(times[arm])
        print(f"{arm:34}{us:11.0f}{floor_us / us:11.3f}")
    http = statistics.median(times["ranker app"]) - statistics.median(times["recommender alone"])
    print(f"{'HTTP part of the ranker app':34}{http:11.0f}")
    print(f"onnxruntime: {statistics.median(onnx):.1%} of the recommender's CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
