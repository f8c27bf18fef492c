"""CPU time per ranker request with telemetry on, against the same ranker with it off, in the same run.

    make demo                                    # once: trains and promotes a model under var/demo
    .venv/bin/python benchmarks/telemetry_cost.py [--data-dir var/demo] [--requests 3000] [--rounds 3]

What the HTTP telemetry and the metrics cost the hot path, measured so that a busy machine
does not decide the answer: each run is a fresh process that builds the ranker app as
``scalerec serve`` does (embedded backends over the demo's data, the promoted model in process),
warms it up, then sends ``--requests`` recommendation requests for random users of the shop
straight into the ASGI app (no sockets, no load generator) and reports the *CPU time* the
process spent per request (``time.process_time``: every thread of the process, not the wall
clock, so other jobs on the machine change it little). The floor is the same app with FastAPI's
telemetry configured off and no metric reader (``OTEL_METRICS_EXPORTER=none``): what the ranker
costs with no instrumentation at all. Runs alternate floor and instrumented, ``--rounds`` each;
the best of each is printed with the ratio floor / instrumented (1.0 = free).

``benchmarks/ranker_throughput.py`` remains the throughput figure (HTTP server, workers, wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import asyncio, json, os, random, sys, time
    import scalerec_core.telemetry as telemetry
    off = os.environ["BENCH_MODE"] == "off"
    if off:
        # No HTTP spans or request metrics (FastAPI's telemetry off); OTEL_METRICS_EXPORTER=none: no reader.
        telemetry.http_telemetry = lambda: {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
        # Older trees traced HTTP with a middleware of their own: off too, so they can be measured alike.
        telemetry.install_http_tracing = lambda app, service: None
    from scalerec_ranker.main import create_app

    app = create_app()
    users, n = int(os.environ["BENCH_USERS"]), int(os.environ["BENCH_REQUESTS"])
    rng = random.Random(0)

    async def send(_message):
        if _message["type"] == "http.response.start" and _message["status"] != 200:
            raise SystemExit(f"HTTP {_message['status']}")

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    def scope(user):
        return {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": "/v1/recommendations", "raw_path": b"/v1/recommendations", "root_path": "",
            "query_string": f"user_id=u{user:05d}&k=10".encode(), "headers": [(b"host", b"bench")],
            "server": ("127.0.0.1", 8084), "client": ("127.0.0.1", 50000),
        }

    async def main():
        async with app.router.lifespan_context(app):
            for _ in range(min(n, 2000)):  # warm-up: caches, lazy allocations
                await app(scope(rng.randrange(users)), receive, send)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(n):
                await app(scope(rng.randrange(users)), receive, send)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print("RESULT " + json.dumps({"cpu_us": cpu / n * 1e6, "wall_us": wall / n * 1e6}))

    asyncio.run(main())
    """
)


def run(mode: str, args: argparse.Namespace) -> dict[str, float]:
    env = {
        **os.environ,
        "BENCH_MODE": mode,
        "BENCH_USERS": str(args.users),
        "BENCH_REQUESTS": str(args.requests),
        "DATA_DIR": str(args.data_dir.resolve()),
        "MODEL_REPOSITORY": str((args.data_dir / "model_repository").resolve()),
        "AUTH": "disabled",
        "LOG_LEVEL": "WARNING",
        "OTEL_METRICS_EXPORTER": "none" if mode == "off" else "prometheus",
        # One scoring thread: the CPU figure is then this request path's, not a thread pool's spinning.
        "SCORER_URL": "onnxruntime://?inline=1&threads=1",
    }
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(lines[-1][len("RESULT ") :])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("var/demo"))
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users", type=int, default=3000, help="user ids u00000.. asked for")
    args = ap.parse_args()
    if not any((args.data_dir / "model_repository" / "scalerec_ranker").glob("[0-9]*")):
        print(f"no model under {args.data_dir}/model_repository: run `make demo` first", file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            results[mode].append(run(mode, args))
    best = {mode: min(r["cpu_us"] for r in runs) for mode, runs in results.items()}
    load = os.getloadavg()
    print(
        f"ranker CPU per request, {args.requests} requests x {args.rounds} rounds per mode, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'mode':<34}{'best CPU us/req':>16}{'all runs (CPU us/req)':>40}")
    for mode, label in (("off", "floor: no telemetry, no metrics"), ("on", "telemetry + /metrics (as shipped)")):
        runs = ", ".join(f"{r['cpu_us']:.0f}" for r in results[mode])
        print(f"{label:<34}{best[mode]:>16.0f}{runs:>40}")
    print(f"ratio floor / instrumented: {best['off'] / best['on']:.3f}  (cost {best['on'] / best['off'] - 1:+.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
