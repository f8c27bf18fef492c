"""Process start-up shared by the services: logging, telemetry, uvicorn."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import math
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from scalerec_core.http_limits import HttpLimits
from scalerec_core.logging import configure_logging
from scalerec_core.settings import ServiceSettings
from scalerec_core.telemetry import setup_telemetry


def bootstrap(settings: ServiceSettings) -> None:
    configure_logging(
        settings.service_name, settings.log_level, settings.log_format, settings.log_id_key.get_secret_value()
    )
    setup_telemetry(settings)


@contextmanager
def long_lived_heap(young_threshold: int | None = None) -> Iterator[None]:
    """Run the body (a service's life after start-up) with what start-up built out of the cyclic GC's way.

    Everything allocated so far (imports, clients, a model's tables) lives as long as the process:
    one collection, then ``gc.freeze()``, so that later full collections scan only what the work made
    since (the ranker's full-collection pause on the demo: 67 ms -> 6 ms, benchmarks/ranker_gc_pauses.py).
    ``young_threshold`` replaces the youngest generation's threshold (700 objects by default) for a
    process that allocates in large batches: the preprocessor's batch of 2,000 events makes far more
    than 700 objects that live until the batch ends, and collecting every 700 of them promoted them
    into older generations that were then collected too (benchmarks/ingest_throughput.py: 13 % of its
    CPU per event at 10,000).  Both are undone on exit, so a process that runs more than one app
    (the tests) is left as it was.
    """
    gc.collect()
    gc.freeze()
    before = gc.get_threshold()
    if young_threshold is not None:
        gc.set_threshold(young_threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def available_cpus() -> int:
    """CPUs this process may use: the cgroup's CPU quota (a pod's limit) if set, else its affinity mask."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def serve(
    app: Any, host: str, port: int, log_level: str = "info", workers: int = 1, limits: HttpLimits | None = None
) -> None:
    """Run ``app`` under uvicorn; ``app`` may be an import string of an app factory when ``workers`` > 1
    (each worker process then builds its own app, clients and model activation). ``limits``: how long an
    idle HTTP/1.1 connection is kept open, and how slow or large a client's requests may be (the services
    pass their ``HTTP_*`` settings; :mod:`scalerec_core.http_limits`).

    Several workers each listen on a socket of their own bound with ``SO_REUSEPORT`` (see
    :class:`ReusePortWorkers`), where the platform has it; uvicorn's own workers otherwise.
    """
    import uvicorn

    factory = isinstance(app, str)
    if factory and workers > 1 and hasattr(socket, "SO_REUSEPORT"):
        ReusePortWorkers(app, host, port, log_level, workers, limits=limits).run()
        return
    uvicorn.run(
        app,
        host=host,
        port=port,
        factory=factory,
        workers=workers if factory and workers > 1 else None,
        **_uvicorn_options(log_level, limits or HttpLimits()),
    )


class _ServedSettings(Protocol):
    host: str
    port: int
    log_level: str
    http_keep_alive_s: float
    http_header_timeout_s: float
    http_body_timeout_s: float
    http_max_header_bytes: int


Settings = TypeVar("Settings", bound=ServiceSettings)


def configured(service: str, get_settings: Callable[[], Settings]) -> Settings:
    """``python -m scalerec_<service>``'s settings from the environment, or exit 2 saying what is wrong.

    A variable of the wrong type, ``API_KEYS`` missing or naming an unknown scope: one message on stderr, not
    a traceback through pydantic and the app's construction (the keys are checked here, before anything
    starts, as well as where the app reads them).
    """
    try:
        settings = get_settings()
        settings.key_ring()
    except ValueError as exc:  # pydantic's ValidationError is one
        print(f"scalerec_{service}: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings


def serve_service(factory: str, settings: _ServedSettings, workers: int = 1) -> None:
    """``python -m scalerec_<service>``: the app ``factory`` (``"module:create_app"``) builds from ``settings``,
    served on their host and port with their HTTP limits, in ``workers`` processes (each imports the
    factory and builds its own app from the same environment) or, for one, built here."""
    limits = HttpLimits.of(settings)
    if workers > 1:
        serve(factory, settings.host, settings.port, settings.log_level, workers, limits)
        return
    module, _, name = factory.partition(":")
    create_app = getattr(importlib.import_module(module), name)
    serve(create_app(settings), settings.host, settings.port, settings.log_level, limits=limits)


def _uvicorn_options(log_level: str, limits: HttpLimits) -> dict[str, Any]:
    """What every service's uvicorn runs with, one worker or many."""
    return {
        "log_level": log_level.lower(),
        "access_log": False,
        "lifespan": "on",
        "timeout_keep_alive": limits.keep_alive_s,
        "http": limits.protocol(),
        # No route speaks WebSocket: without a WebSocket protocol an upgrade request is plain HTTP, so it
        # passes the guard's keys like any other (a WebSocket scope would not) and gets the error shape.
        "ws": "none",
        # X-Forwarded-For only from the proxies named (uvicorn trusts 127.0.0.1 by default: behind a mesh
        # sidecar anyone could choose the address the rate limits count by).
        "proxy_headers": bool(limits.forwarded_allow_ips),
        "forwarded_allow_ips": limits.forwarded_allow_ips or None,
    }


STARTUP_FAILURE = 3  # uvicorn's exit code for a server that never started (bad app, lifespan failed)
_BACKLOG = 2048  # uvicorn's default


def _tcp_socket(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the kernel's pick), for a local server about to be started."""
    with _tcp_socket(host) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    sock = _tcp_socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


HEARTBEAT_S = 1.0  # how often a worker's event loop marks itself alive for the supervisor
STOPPING = -1.0  # what a worker's heartbeat says once it has begun its graceful shutdown


async def _beat(heartbeat: Any) -> None:
    """Write the monotonic clock (system-wide on Linux) into ``heartbeat`` while the event loop runs."""
    while True:
        heartbeat.value = time.monotonic()
        await asyncio.sleep(HEARTBEAT_S)


def _beating_server(config: Any, heartbeat: Any) -> Any:
    """A uvicorn server that beats once its start-up (the app's lifespan) has finished, and says when it stops."""
    import uvicorn

    class Server(uvicorn.Server):
        beating: asyncio.Task[None] | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            self.beating = asyncio.get_running_loop().create_task(_beat(heartbeat))

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if self.beating is not None:
                self.beating.cancel()
            heartbeat.value = STOPPING
            await super().shutdown(sockets=sockets)

    return Server(config)


def _worker(
    app: str, host: str, port: int, log_level: str, limits: HttpLimits, heartbeat: Any
) -> None:  # pragma: no cover - runs in a child
    """One worker process: its own socket on the shared port, and uvicorn on it.

    The socket is bound now but listens only once the app's start-up has finished (uvicorn's
    ``create_server`` after the lifespan): the kernel gives connections to listening sockets alone, so a
    worker that is still starting (a restart after a crash, a slow model activation) draws none of them
    to wait in its backlog while the others serve.
    """
    import uvicorn

    try:
        sock = _reuse_port_socket(host, port)
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc}", file=sys.stderr, flush=True)
        sys.exit(STARTUP_FAILURE)
    config = uvicorn.Config(
        app, host=host, port=port, factory=True, backlog=_BACKLOG, **_uvicorn_options(log_level, limits)
    )
    try:
        config.load()  # imports and builds the app: what fails here fails the same way on every restart
    except Exception:
        traceback.print_exc()
        sys.exit(STARTUP_FAILURE)
    _beating_server(config, heartbeat).run(sockets=[sock])


class ReusePortWorkers:
    """``workers`` uvicorn processes, each accepting on a listening socket of its own (``SO_REUSEPORT``).

    With uvicorn's own workers all processes accept from one socket, and whichever wakes first takes
    every connection waiting in it: the benchmark's 8 keep-alive connections, opened at once, landed all
    on one of the two ranker workers in about a quarter of the runs, which then served at half the pod's
    throughput with one core idle (`busiest` 98-100 % in benchmarks/ranker_throughput.py). A proxy's
    or gateway's pool of keep-alive connections does the same to a pod. With a socket per worker the
    kernel spreads connections over the workers as they arrive (by a hash of their addresses).

    The supervisor restarts a worker that exits, and kills and replaces one whose event loop it has not
    seen run for ``hang_timeout_s`` since its start-up finished (each worker's loop writes the time into
    shared memory every second), one whose start-up has not finished after ``startup_timeout_s`` (a
    dependency that hangs instead of failing), or that has not finished stopping ``stop_timeout_s`` after it began:
    a pod's liveness probe alone would not find a hung worker, since the kernel sends each probe's
    connection to any of the workers and the live ones answer. Silence is timed by the supervisor's own
    checks, and a gap in those (every process stopped together: SIGSTOP, a frozen cgroup, a paused VM)
    counts for no one. It stops (with
    status 3) when a worker fails to start (a bad app fails the same way every time), and on SIGTERM
    or SIGINT asks every worker to finish what it
    serves (uvicorn's graceful shutdown), killing those still running after ``stop_timeout_s``. It
    first binds the port *without* ``SO_REUSEPORT`` for a moment, so that a port another server holds
    is refused as uvicorn would refuse it rather than silently shared with that server.
    """

    def __init__(
        self,
        app: str,
        host: str,
        port: int,
        log_level: str,
        workers: int,
        stop_timeout_s: float = 30.0,
        hang_timeout_s: float = 30.0,
        startup_timeout_s: float = 600.0,
        limits: HttpLimits | None = None,
    ) -> None:
        self.app, self.host, self.port, self.log_level = app, host, port, log_level
        self.limits = limits or HttpLimits()
        self.workers = workers
        self.stop_timeout_s = stop_timeout_s
        self.hang_timeout_s = hang_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self._stop = threading.Event()
        self._context = multiprocessing.get_context("spawn")

    def _start(self) -> tuple[multiprocessing.process.BaseProcess, Any]:
        """A worker, and the shared double its event loop writes the time into (0 until it has started)."""
        heartbeat = self._context.Value("d", 0.0, lock=False)
        process = self._context.Process(
            target=_worker,
            args=(self.app, self.host, self.port, self.log_level, self.limits, heartbeat),
            name="scalerec-worker",
        )
        process.start()
        return process, heartbeat

    def run(self) -> None:
        import uvicorn

        # uvicorn's logging, as its own supervisor has it: the messages below go to "uvicorn.error".
        uvicorn.Config(self.app, log_level=self.log_level.lower(), factory=True)
        log = logging.getLogger("uvicorn.error")
        probe = _tcp_socket(self.host)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((self.host, self.port))
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", self.host, self.port, exc)
            sys.exit(STARTUP_FAILURE)
        finally:
            probe.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        workers = [self._start() for _ in range(self.workers)]
        log.info(
            "%d worker processes on %s:%d, each with its own socket (SO_REUSEPORT): %s",
            self.workers,
            self.host,
            self.port,
            " ".join(str(p.pid) for p, _ in workers),
        )
        failed = False
        checked = time.monotonic()
        seen = [(0.0, checked)] * len(workers)  # each worker's heartbeat as last seen, and since when
        while not self._stop.wait(0.5):
            now = time.monotonic()
            frozen = now - checked > self.hang_timeout_s / 2  # this process did not run either
            checked = now
            for i, (process, heartbeat) in enumerate(workers):
                if process.is_alive():
                    beat = heartbeat.value
                    if beat != seen[i][0] or frozen:
                        seen[i] = (beat, now)
                        continue
                    silent = now - seen[i][1]
                    if beat > 0 and silent > self.hang_timeout_s:
                        why = f"its event loop has not run for {silent:.0f} s"
                    elif beat == 0 and silent > self.startup_timeout_s:
                        why = f"its start-up has not finished after {silent:.0f} s"
                    elif beat == STOPPING and silent > self.stop_timeout_s:
                        why = f"still stopping after {silent:.0f} s"
                    else:
                        continue
                    log.error("worker %d: %s: killed, starting another", process.pid, why)
                    process.kill()
                    process.join()
                    workers[i], seen[i] = self._start(), (0.0, now)
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    log.error("worker %d failed to start: stopping", process.pid)
                    failed = True
                    self._stop.set()
                    break
                log.warning("worker %d exited (status %s): starting another", process.pid, process.exitcode)
                workers[i], seen[i] = self._start(), (0.0, now)
        processes = [p for p, _ in workers]
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker %d still running after %.0f s: killed", process.pid, self.stop_timeout_s)
                process.kill()
                process.join()
        if failed:
            sys.exit(STARTUP_FAILURE)
