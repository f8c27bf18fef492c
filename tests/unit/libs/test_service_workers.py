"""scalerec_core.service.serve with several workers: a listening socket each (SO_REUSEPORT), supervised.

Real processes on a real port: the supervisor and its workers are started as ``python -m scalerec_ranker``
starts them (``serve`` with an app factory's import string), and are asked over TCP which process answered.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from scalerec_core.service import free_port

APP = textwrap.dedent(
    """
    import asyncio
    import os
    import time
    from contextlib import asynccontextmanager
    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(app):
        # With SLOW_START_DIR, the first worker to start is ready at once; every other one waits in its
        # start-up until a file named "release" appears there.
        gate = os.environ.get("SLOW_START_DIR")
        if gate:
            try:
                os.close(os.open(os.path.join(gate, "first"), os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                while not os.path.exists(os.path.join(gate, "release")):
                    await asyncio.sleep(0.05)
        yield

    def create() -> FastAPI:
        if os.environ.get("BROKEN_APP"):
            raise RuntimeError("this app cannot be built")
        app = FastAPI(lifespan=lifespan)

        @app.get("/pid")
        async def pid() -> int:
            return os.getpid()

        @app.get("/hang")
        async def hang() -> None:
            time.sleep(3600)  # blocks this worker's event loop: alive, serving nothing

        return app
    """
)
SERVE = "import sys; from scalerec_core.service import serve; serve('pid_app:create', '127.0.0.1', int(sys.argv[1]), 'info', 2)"


# The supervisor as serve() runs it, with a short wait before a worker whose event loop stopped is replaced.
SUPERVISE_HANGS = (
    "import sys; from scalerec_core.service import ReusePortWorkers;"
    " ReusePortWorkers('pid_app:create', '127.0.0.1', int(sys.argv[1]), 'info', 2, hang_timeout_s=3).run()"
)


# The supervisor with a short wait before a worker whose start-up never finishes is replaced.
SUPERVISE_SLOW_STARTS = (
    "import sys; from scalerec_core.service import ReusePortWorkers;"
    " ReusePortWorkers('pid_app:create', '127.0.0.1', int(sys.argv[1]), 'info', 2, startup_timeout_s=3).run()"
)


def _start(tmp: Path, port: int, code: str = SERVE, **env: str) -> subprocess.Popen[str]:
    (tmp / "pid_app.py").write_text(APP)
    return subprocess.Popen(
        [sys.executable, "-c", code, str(port)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp), *sys.path]), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _pids(port: int, n: int) -> set[int]:
    """The processes that answered ``n`` requests, each on a connection of its own."""
    seen = set()
    for _ in range(n):
        with httpx.Client(timeout=5) as client:  # a new connection each time
            seen.add(int(client.get(f"http://127.0.0.1:{port}/pid").json()))
    return seen


def _wait_serving(port: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        try:
            if len(_pids(port, 16)) == 2:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("two workers never both answered")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def _serving(tmp: Path, code: str = SERVE) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """The supervisor and its two workers, serving; the whole group killed afterwards (its output kept)."""
    port = free_port()
    proc = _start(tmp, port, code)
    try:
        _wait_serving(port, proc)
        yield port, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    with _serving(tmp_path) as server:
        yield server


def test_connections_are_spread_over_the_workers_and_a_dead_one_is_replaced(
    served: tuple[int, subprocess.Popen[str]],
) -> None:
    port, proc = served
    workers = _pids(port, 40)
    # Each connection lands on a worker by a hash of its addresses: 40 on one worker would be 2^-39.
    assert len(workers) == 2 and proc.pid not in workers, workers
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    now: set[int] = set()
    while time.monotonic() < deadline:
        try:
            now = _pids(port, 16)  # a connection the kernel gives the dead socket is refused: retried
        except httpx.HTTPError:
            continue
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.2)
    assert len(now) == 2 and victim not in now and (now & workers), (workers, now)


def test_a_worker_whose_event_loop_hangs_is_killed_and_replaced(tmp_path: Path) -> None:
    """Alive but serving nothing: the other worker would keep a liveness probe passing half the time."""
    with _serving(tmp_path, SUPERVISE_HANGS) as (port, proc):
        workers = _pids(port, 40)
        with httpx.Client(timeout=1) as client, pytest.raises(httpx.ReadTimeout):
            client.get(f"http://127.0.0.1:{port}/hang")  # lands on one of the two, which then hangs
        deadline = time.monotonic() + 60
        now: set[int] = set()
        while time.monotonic() < deadline:
            try:
                now = _pids(port, 16)  # connections the hung worker accepted time out: retried
            except httpx.HTTPError:
                continue
            if len(now) == 2 and not now <= workers:
                break
            time.sleep(0.2)
        assert len(now) == 2 and len(now & workers) == 1, (workers, now)
        hung = (workers - now).pop()
        assert not _alive(hung)
        assert proc.poll() is None
    out, _ = proc.communicate()
    assert f"worker {hung}: its event loop has not run for" in out, out[-3000:]


def _first_answers(port: int, proc: subprocess.Popen[str], timeout: float = 60) -> int:
    """The pid of the first worker that answers (polling until one does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        try:
            return _pids(port, 1).pop()
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("no worker answered")


def test_a_worker_still_starting_draws_no_connections(tmp_path: Path) -> None:
    """Its socket listens only once its app has started: meanwhile every new connection goes to the other
    worker and is answered at once, instead of a share waiting in the starting worker's backlog."""
    port = free_port()
    proc = _start(tmp_path, port, SERVE, SLOW_START_DIR=str(tmp_path))
    try:
        ready = _first_answers(port, proc)
        time.sleep(1)  # the other worker is past binding its socket, waiting in its start-up
        started = time.monotonic()
        for _ in range(5):
            assert _pids(port, 10) == {ready}  # 50 new connections, 5 s each at most: none waits
        assert time.monotonic() - started < 20
        (tmp_path / "release").touch()
        _wait_serving(port, proc)  # and once it has started, it takes its share
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_worker_whose_start_up_never_finishes_is_replaced(tmp_path: Path) -> None:
    port = free_port()
    proc = _start(tmp_path, port, SUPERVISE_SLOW_STARTS, SLOW_START_DIR=str(tmp_path))
    try:
        ready = _first_answers(port, proc)
        time.sleep(8)  # two start-up timeouts of 3 s
        assert _pids(port, 10) == {ready} and proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    out, _ = proc.communicate()
    assert out.count("its start-up has not finished after") >= 2, out[-3000:]


def test_workers_stopped_together_with_the_supervisor_are_not_taken_for_hung(tmp_path: Path) -> None:
    """SIGSTOP to the whole group (Ctrl-Z, a frozen cgroup, a paused VM) for longer than the hang timeout."""
    with _serving(tmp_path, SUPERVISE_HANGS) as (port, proc):
        workers = _pids(port, 40)
        # The workers stop a moment before the supervisor (a freezer stops a group's tasks one by one) and
        # resume a moment after it, so that it has seen their last beats and checks again before their
        # next: the order that, without the supervisor timing its own gap, takes them for hung.
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(1)
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(5)
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(3)  # past the supervisor's next checks, each half a second apart
        assert _pids(port, 40) == workers and all(_alive(p) for p in workers)
    out, _ = proc.communicate()
    assert "killed" not in out, out[-3000:]


def test_sigterm_stops_the_supervisor_and_every_worker(served: tuple[int, subprocess.Popen[str]]) -> None:
    port, proc = served
    workers = _pids(port, 40)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)


def test_a_port_in_use_is_refused_not_shared(served: tuple[int, subprocess.Popen[str]], tmp_path: Path) -> None:
    port, _ = served
    second = _start(tmp_path, port)
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 3, out[-3000:]
    assert f"cannot listen on 127.0.0.1:{port}" in out


def test_an_app_that_cannot_start_stops_the_supervisor(tmp_path: Path) -> None:
    """A worker that fails at start-up fails again on every restart: the supervisor exits with status 3."""
    proc = _start(tmp_path, free_port(), BROKEN_APP="1")
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, out[-3000:]
    assert "failed to start" in out


def test_the_accept_balance_benchmark_runs_and_reports() -> None:
    """A few-trial smoke run of benchmarks/accept_balance.py: both ways start, answer and get a row."""
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "accept_balance.py"), "--trials", "3"],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "%" in line]
    assert [r.split("|")[1].strip() for r in rows] == [
        "uvicorn --workers (one shared socket)",
        "scalerec serve (a SO_REUSEPORT socket each)",
    ], out.stdout
    for row in rows:  # three trials, each a split of 8 connections over the two workers ("5/3: 2, 6/2: 1")
        trials = re.findall(r"(\d+)/(\d+): (\d+)", row.split("|")[2])
        assert all(int(a) + int(b) == 8 for a, b, _ in trials), row
        assert sum(int(n) for _, _, n in trials) == 3, row


def _exchange(sock: socket.socket) -> bytes:
    """One GET /pid on an open connection: the whole answer (head and body), or b"" if the server had closed it."""
    sock.sendall(b"GET /pid HTTP/1.1\r\nHost: test\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            return answer
        answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("workers", [1, 2])
def test_idle_connections_are_kept_as_long_as_asked(tmp_path: Path, workers: int) -> None:
    """``limits`` reach uvicorn on both of serve()'s paths: an idle connection is kept ``keep_alive_s``, then
    closed by the server (HTTP_KEEP_ALIVE_S; uvicorn's own default would close it after 5 s), and a request
    whose headers stop half-way is answered 408 after ``header_timeout_s`` (HTTP_HEADER_TIMEOUT_S; the
    limits themselves are tested in test_http_limits.py)."""
    code = (
        "import sys; from scalerec_core.service import serve; from scalerec_core.http_limits import HttpLimits;"
        f" serve('pid_app:create', '127.0.0.1', int(sys.argv[1]), 'info', {workers},"
        " limits=HttpLimits(keep_alive_s=2.5, header_timeout_s=1.0))"
    )
    port = free_port()
    proc = _start(tmp_path, port, code)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            try:
                _pids(port, 1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server never answered"
                time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert _exchange(sock).startswith(b"HTTP/1.1 200")
            time.sleep(1.5)  # idle, shorter than asked: still open
            assert _exchange(sock).startswith(b"HTTP/1.1 200")
            time.sleep(4.0)  # idle past it: the server has closed the connection
            try:
                closed = _exchange(sock) == b""
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            assert closed
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: test\r\n")  # and no end of the headers
            started = time.monotonic()
            assert sock.recv(4096).startswith(b"HTTP/1.1 408")
            assert 0.8 < time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
