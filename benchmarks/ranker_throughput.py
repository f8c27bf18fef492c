"""Ranker throughput against a bare FastAPI app, with the same load generator, in the same run.

    make demo                                    # once: trains and promotes a model under var/demo
    .venv/bin/python benchmarks/ranker_throughput.py [--data-dir var/demo] [--duration 10]
        [--connections 1,8,32,64] [--workers N] [--profile]

The ranker runs as it does under ``scalerec serve`` (``python -m scalerec_ranker``,
embedded backends over the demo's data, the promoted model in process).  The floor is
a FastAPI app served the same way (``scalerec_core.service.serve``: as many uvicorn workers, each on
its own ``SO_REUSEPORT`` socket), answering every request
with one real response body of the ranker: what the hardware and the framework give
before any recommender work.  The load generator is ``wrk`` (Debian) with a Lua script
that asks for a random user of the demo's shop per request; the floor row proves it is
not the bottleneck.

Printed per connection count: req/s, p50/p95/p99, the floor's req/s and p99, the
ratio, the share of answers that were fallbacks (they do not count as served by the
model), the share whose user state missed the ranker's cache (each worker's embedded cache
fills as users come back: ``--warmup`` decides how warm the rows start), and the
candidates scored per request.  ``--profile`` samples the ranker
workers with py-spy during the best run and prints the share of ranker CPU spent in
model scoring (onnxruntime's ``run``).  ``busiest`` is the busiest ranker worker's share of the
workers' CPU during the row (50 % = balanced with two): the kernel places each connection on a
worker by a hash of its addresses, and a row whose connections mostly landed on one worker measures
one core, not two.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from scalerec_core.service import free_port

HERE = Path(__file__).resolve().parent

WRK_SCRIPT = textwrap.dedent(
    """
    math.randomseed(os.time())
    local users = tonumber(os.getenv("BENCH_USERS") or "3000")
    local fallbacks, answers, candidates, misses = 0, 0, 0, 0
    request = function()
      return wrk.format("GET", string.format("/v1/recommendations?user_id=u%05d&k=10", math.random(0, users - 1)))
    end
    response = function(status, headers, body)
      answers = answers + 1
      if string.find(body, '"fallback":true', 1, true) then fallbacks = fallbacks + 1 end
      if not string.find(body, '"history_source":"cache"', 1, true) then misses = misses + 1 end
      local c = string.match(body, '"candidates_scored":(%d+)')
      if c then candidates = candidates + tonumber(c) end
    end
    -- wrk runs one Lua state per thread; done() sees only the main one, so totals travel in a file per thread.
    local threads = {}
    setup = function(thread) table.insert(threads, thread) end
    done = function(summary, latency, requests)
      local f, a, c, m = 0, 0, 0, 0
      for _, t in ipairs(threads) do
        f = f + t:get("fallbacks"); a = a + t:get("answers"); c = c + t:get("candidates"); m = m + t:get("misses")
      end
      io.write(string.format("BENCH %d %d %.3f %.3f %.3f %.3f %d %d %d %d\\n",
        summary.requests, summary.duration, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
        latency:percentile(99) / 1000, latency.max / 1000, a, f, c, m))
      io.write(string.format("ERRORS %d %d %d %d %d\\n", summary.errors.connect, summary.errors.read,
        summary.errors.write, summary.errors.status, summary.errors.timeout))
    end
    """
)
# Thread-local counters have to be globals for thread:get() to see them.
WRK_SCRIPT = WRK_SCRIPT.replace(
    "local fallbacks, answers, candidates, misses = 0, 0, 0, 0", "fallbacks, answers, candidates, misses = 0, 0, 0, 0"
)

FLOOR_APP = textwrap.dedent(
    """
    import os
    from fastapi import FastAPI, Query
    from fastapi.responses import Response

    BODY = open(os.environ["BENCH_BODY"], "rb").read()
    app = FastAPI()

    @app.get("/v1/recommendations")
    async def recommendations(user_id: str = Query(min_length=1), k: int = 10) -> Response:
        return Response(BODY, media_type="application/json")


    def create() -> FastAPI:  # for serve()'s workers, which import a factory
        return app
    """
)
# The floor runs in the ranker's process model: scalerec_core.service.serve, the same workers and sockets.
FLOOR_SERVE = "import sys; from scalerec_core.service import serve; serve('floor_app:create', '127.0.0.1', int(sys.argv[1]), 'warning', int(sys.argv[2]))"


@dataclass
class Run:
    connections: int
    rps: float
    p50: float
    p95: float
    p99: float
    answers: int
    fallbacks: int
    candidates: int
    errors: int
    misses: int = 0

    @property
    def miss_share(self) -> float:
        """Answers whose user state was not in the ranker's cache (read from the store, or not at all)."""
        return self.misses / self.answers if self.answers else 0.0

    @property
    def fallback_share(self) -> float:
        return self.fallbacks / self.answers if self.answers else 0.0

    @property
    def candidates_per_request(self) -> float:
        return self.candidates / self.answers if self.answers else 0.0


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code in (200, 404):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wrk(url: str, connections: int, duration: float, threads: int, users: int, script: Path) -> Run:
    cmd = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "BENCH_USERS": str(users)})
    m = re.search(r"^BENCH (\S+) (\S+) (\S+) (\S+) (\S+) (\S+) (\S+) (\S+) (\S+) (\S+)$", out.stdout, re.M)
    e = re.search(r"^ERRORS (\d+) (\d+) (\d+) (\d+) (\d+)$", out.stdout, re.M)
    if not m or not e:
        raise RuntimeError(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    requests, duration_us = int(m[1]), int(m[2])
    return Run(
        connections,
        requests / (duration_us / 1e6),
        float(m[3]),
        float(m[4]),
        float(m[5]),
        int(m[7]),
        int(m[8]),
        int(m[9]),
        sum(int(x) for x in e.groups()),
        int(m[10]),
    )


def worker_pids(parent: int) -> list[int]:
    """The uvicorn worker processes under ``parent`` (or the parent itself when it serves alone)."""
    kids = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    # uvicorn's multiprocess supervisor spawns a resource tracker too; the workers are the python children.
    pids = [
        int(p)
        for p in kids
        if "scalerec_ranker" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
        or "multiprocessing.spawn" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
    ]
    return pids or [parent]


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """User + system CPU ticks per process so far (/proc/PID/stat fields 14 and 15)."""
    ticks = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


def busiest_share(before: dict[int, int], after: dict[int, int]) -> float | None:
    """The busiest worker's share of the workers' CPU between two readings (1/N = balanced); None for one."""
    used = [after[p] - before[p] for p in after if p in before]
    if len(used) < 2 or sum(used) <= 0:
        return None
    return max(used) / sum(used)


def scoring_share(pids: list[int], seconds: float, out_dir: Path) -> tuple[float, int]:
    """Share of sampled (non-idle) ranker stacks inside onnxruntime's run, over all workers."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    procs = []
    files = []
    for pid in pids:
        f = out_dir / f"profile-{pid}.txt"
        files.append(f)
        procs.append(
            subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(max(1, round(seconds))),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(f),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    total = scoring = 0
    for p in procs:
        p.wait()
    for f in files:
        if not f.exists():
            continue
        for line in f.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            leaf = stack.rsplit(";", 1)[-1]
            if leaf.startswith(("_worker (concurrent/futures/thread.py", "select (selectors.py", "wait (threading.py")):
                continue  # a thread waiting for work is idle, whatever py-spy's heuristic says
            total += n
            if "onnxruntime_inference_collection.py" in stack or "tritonclient" in stack:
                scoring += n
    return (scoring / total if total else 0.0), total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("var/demo"))
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per connection count")
    ap.add_argument("--connections", default="1,8,32,64")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="uvicorn workers, ranker and floor")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--users", type=int, default=3000, help="user ids u00000.. asked for")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds of load before the first row (fills caches)")
    ap.add_argument("--profile", action="store_true", help="py-spy the ranker during the best run")
    ap.add_argument("--json", type=Path, help="write the table as JSON too")
    args = ap.parse_args()

    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install -y wrk", file=sys.stderr)
        return 2
    repo_dir = args.data_dir / "model_repository"
    if not (repo_dir / "scalerec_ranker" / "champion").exists() and not any(repo_dir.glob("scalerec_ranker/[0-9]*")):
        print(f"no promoted model under {repo_dir}: run `make demo` first", file=sys.stderr)
        return 2
    conns = [int(c) for c in args.connections.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="scalerec-bench-ranker-"))
    script = tmp / "bench.lua"
    script.write_text(WRK_SCRIPT)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATA_DIR": str(args.data_dir.resolve()),
        "MODEL_REPOSITORY": str(repo_dir.resolve()),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": str(args.workers),
        "LOG_LEVEL": "WARNING",
        "AUTH": "disabled",
    }
    log = open(tmp / "ranker.log", "wb")  # noqa: SIM115 - owned by the child
    ranker = subprocess.Popen(
        [sys.executable, "-m", "scalerec_ranker"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    results: list[Run] = []
    floor: list[Run] = []
    share: tuple[float, int] | None = None
    # Per row, the busiest worker's share of the workers' CPU: uvicorn's workers race to accept, so a
    # few connections opened at once may land mostly on one of them (that row then measures one core).
    balance: list[float | None] = []
    try:
        wait_ready(url, ranker)
        # Every worker activates the champion; wait until answers come from the model.
        deadline = time.monotonic() + 120
        body = b""
        while time.monotonic() < deadline:
            r = httpx.get(f"{url}/v1/recommendations", params={"user_id": "u00001", "k": 10}, timeout=10)
            if r.status_code == 200 and not r.json()["fallback"]:
                body = r.content
                break
            time.sleep(0.5)
        if not body:
            raise RuntimeError(f"the ranker never answered from the model; see {tmp / 'ranker.log'}")
        for _ in range(50):  # every worker warm
            httpx.get(f"{url}/v1/recommendations", params={"user_id": "u00002", "k": 10}, timeout=10)
        wrk(url, 8, args.warmup, args.wrk_threads, args.users, script)  # warm-up, not recorded
        workers = worker_pids(ranker.pid)
        for c in conns:
            before = cpu_ticks(workers)
            results.append(wrk(url, c, args.duration, args.wrk_threads, args.users, script))
            balance.append(busiest_share(before, cpu_ticks(workers)))
        if args.profile:
            best = max(results, key=lambda r: r.rps)
            pids = worker_pids(ranker.pid)
            gen = subprocess.Popen(
                [
                    "wrk",
                    f"-t{args.wrk_threads}",
                    f"-c{best.connections}",
                    f"-d{round(args.duration) + 2}s",
                    "-s",
                    str(script),
                    url,
                ],
                stdout=subprocess.DEVNULL,
                env={**os.environ, "BENCH_USERS": str(args.users)},
            )
            time.sleep(1)
            share = scoring_share(pids, args.duration, tmp)
            gen.wait()
    finally:
        stop(ranker)

    (tmp / "body.json").write_bytes(body)
    fport = free_port()
    (tmp / "floor_app.py").write_text(FLOOR_APP)
    floor_proc = subprocess.Popen(
        [sys.executable, "-c", FLOOR_SERVE, str(fport), str(args.workers)],
        cwd=tmp,
        env={
            **os.environ,
            "BENCH_BODY": str(tmp / "body.json"),
            "PYTHONPATH": f"{tmp}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        },
        start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{fport}", floor_proc)
        wrk(f"http://127.0.0.1:{fport}", 8, 2, args.wrk_threads, args.users, script)
        for c in conns:
            floor.append(wrk(f"http://127.0.0.1:{fport}", c, args.duration, args.wrk_threads, args.users, script))
    finally:
        stop(floor_proc)

    load = os.getloadavg()
    print(
        f"ranker throughput: {args.workers} worker(s), wrk {args.wrk_threads} thread(s), {args.duration:g} s per row, "
        f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; response {len(body)} bytes"
    )
    print(
        f"{'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'floor req/s':>11} {'floor p99':>9} "
        f"{'ratio':>6} {'fallback':>8} {'misses':>6} {'cands/req':>9} {'errors':>6} {'busiest':>7}"
    )
    rows = []
    for r, f, busiest in zip(results, floor, balance, strict=True):
        ratio = r.rps / f.rps if f.rps else 0.0
        print(
            f"{r.connections:>5} {r.rps:>8.0f} {r.p50:>7.2f} {r.p95:>7.2f} {r.p99:>7.2f} {f.rps:>11.0f} {f.p99:>9.2f} "
            f"{ratio:>6.3f} {r.fallback_share:>8.1%} {r.miss_share:>6.1%} {r.candidates_per_request:>9.0f} {r.errors:>6} "
            f"{'-' if busiest is None else f'{busiest:.0%}':>7}"
        )
        rows.append(
            {
                "connections": r.connections,
                "rps": r.rps,
                "p50_ms": r.p50,
                "p95_ms": r.p95,
                "p99_ms": r.p99,
                "floor_rps": f.rps,
                "floor_p99_ms": f.p99,
                "ratio": ratio,
                "fallback_share": r.fallback_share,
                "cache_miss_share": r.miss_share,
                "candidates_per_request": r.candidates_per_request,
                "errors": r.errors,
                "busiest_worker_cpu_share": busiest,
            }
        )
    if share is not None:
        print(f"model scoring: {share[0]:.1%} of {share[1]} sampled ranker stacks (py-spy, all workers, best run)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"rows": rows, "scoring_share": share[0] if share else None, "workers": args.workers, "load": load},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
