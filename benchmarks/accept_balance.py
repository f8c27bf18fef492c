"""How keep-alive connections opened at once spread over a service's worker processes.

    .venv/bin/python benchmarks/accept_balance.py [--workers 2] [--connections 8] [--trials 60]

A FastAPI app that answers with its process id runs under ``--workers`` processes two ways:

* ``uvicorn --workers``: uvicorn's own supervisor, every worker accepting from one shared socket;
* ``scalerec_core.service.serve``: the services' way, a listening socket per worker (``SO_REUSEPORT``).

Each trial opens ``--connections`` connections at once (as a proxy's or a load generator's pool does),
then asks each which process holds it.  Printed: how often each split occurred, and the share of trials in
which a worker got none of the connections: it then idles while the others serve every client (the
ranker benchmark's rows with ``busiest`` near 100 %, at half the pod's throughput).  With a socket per
worker the kernel places each connection by a hash of its addresses, so the splits follow the binomial
distribution (a worker left without any of 8 connections onto 2: 2/256 of the trials).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from scalerec_core.service import free_port

APP = textwrap.dedent(
    """
    import os
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/pid")
    async def pid() -> int:
        return os.getpid()

    def create() -> FastAPI:
        return app
    """
)


def _ask_pid(sock: socket.socket) -> str:
    sock.sendall(b"GET /pid HTTP/1.1\r\nHost: bench\r\n\r\n")
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the answer")
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
            if len(body) >= length:
                return body[:length].decode()


def _wait(port: int, workers: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            seen = set()
            for _ in range(8 * workers):
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    seen.add(_ask_pid(s))
            if len(seen) == workers:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{workers} workers never all answered")


def trial_splits(
    cmd: list[str], env: dict[str, str], port: int, workers: int, conns: int, trials: int
) -> list[tuple[int, ...]]:
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(port, workers, proc)
        splits = []
        for _ in range(trials):
            socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(conns)]
            try:
                held = collections.Counter(_ask_pid(s) for s in socks)
            finally:
                for s in socks:
                    s.close()
            splits.append(tuple(sorted([*held.values(), *[0] * (workers - len(held))], reverse=True)))
            time.sleep(0.05)
        return splits
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--trials", type=int, default=60)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scalerec-bench-accept-"))
    (tmp / "pid_app.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp), *sys.path])}
    ways = {
        "uvicorn --workers (one shared socket)": lambda port: [
            sys.executable, "-m", "uvicorn", "pid_app:create", "--factory", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(args.workers), "--log-level", "warning", "--no-access-log",
        ],
        "scalerec serve (a SO_REUSEPORT socket each)": lambda port: [
            sys.executable, "-c",
            "import sys; from scalerec_core.service import serve; "
            f"serve('pid_app:create', '127.0.0.1', {port}, 'warning', {args.workers})",
        ],
    }  # fmt: skip
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{args.connections} connections opened at once onto {args.workers} workers, {args.trials} trials a way; "
        f"{os.cpu_count()} cores, load average {load}\n"
    )
    print(f"| {'served by':44s} | {'splits (trials)':48s} | a worker idle |")
    print(f"|{'-' * 46}|{'-' * 50}|---------------|")
    for name, cmd in ways.items():
        port = free_port()
        splits = trial_splits(cmd(port), env, port, args.workers, args.connections, args.trials)
        counted = collections.Counter(splits).most_common()
        text = ", ".join(f"{'/'.join(map(str, s))}: {n}" for s, n in counted)
        idle = sum(1 for s in splits if s[-1] == 0) / len(splits)
        print(f"| {name:44s} | {text:48s} | {idle:13.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
