"""The preprocessor's consumers, in this process or in ``WORKERS`` child processes.

One :class:`Pipeline` is the three bus consumers (events, items, erasure) with their backends and
workers.  With ``WORKERS=1`` it runs in the API's process, as it always did.  With ``WORKERS=N``
(N > 1) :class:`ChildPipelines` starts N child processes, each with a pipeline of its own: members of
the same consumer groups, so the bus gives each its share of the partitions (a user's events are
keyed to one partition, so one process handles all of a user's events at a time) and a process that
stops or dies hands its partitions to the others, which resume from the committed offsets.  The
event consumer is CPU-bound Python, so this is what uses more than one core per pod or laptop.

The API stays in the parent: ``/v1/stats`` and the readiness check ask every child for its counters
over a pipe when they are asked (not a periodic snapshot, so a lag read after an append is current),
and add them up; what a child that died had counted (as of its last answer) is kept.  A child that
exits is started again.
Each child's own OpenTelemetry metrics are not on the parent's ``/metrics`` (docs/observability.md):
where exact per-scrape metrics matter, run one worker per pod and scale with replicas, as the chart does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from scalerec_adapters.cache import CacheKeys
from scalerec_adapters.worker import ConsumerWorker
from scalerec_core.service import bootstrap, long_lived_heap
from scalerec_events.topics import Topic
from scalerec_storage.backends import Backends

from scalerec_preprocessor.config import PreprocessorSettings
from scalerec_preprocessor.consumers.erasure import ErasureConsumer
from scalerec_preprocessor.consumers.events import BATCH_GC_THRESHOLD, EventsConsumer
from scalerec_preprocessor.consumers.items import ItemsConsumer

log = logging.getLogger(__name__)

# What every pipeline counts, summed over the processes (the names of /v1/stats' fields).
COUNTS = (
    "events_stored",
    "duplicates_dropped",
    "dropped_after_erasure",
    "items_stored",
    "users_erased",
    "timeline_memo_entries",
)
WORKER_COUNTS = ("processed", "dead_lettered", "lag")
STREAMS = ("items", "events", "erasure")  # the consumer workers, by their names
_ANSWER_S = 10.0  # a child that does not answer a stats request within this counts as failing
_STOP_S = 30.0  # a child's graceful stop (its batch in flight, commits, leaving the groups) before it is killed


@dataclass
class Pipeline:
    """The three consumers with their backends and workers, in one process."""

    backends: Backends
    events: EventsConsumer
    items: ItemsConsumer
    erasure: ErasureConsumer
    workers: dict[str, ConsumerWorker]

    @classmethod
    async def open(cls, settings: PreprocessorSettings) -> Pipeline:
        backends = await Backends.open(settings, "preprocessor", cache=True)
        bus, store, cache = backends.bus, backends.store, backends.cache
        assert cache is not None
        keys = CacheKeys(settings.deployment)
        events = EventsConsumer(
            store,
            cache,
            keys,
            bus.producer(),
            settings.history_len,
            settings.user_cache_ttl_seconds,
            examples_topic=settings.topic(Topic.EXAMPLES),
            memo_entries=settings.timeline_memo_entries,
        )
        items = ItemsConsumer(store)
        erasure = ErasureConsumer(store, cache, keys)

        retries = {"max_retries": settings.max_retries}
        batched = {**retries, "max_records": settings.poll_max_records}
        group = settings.stream_group
        workers = {
            "items": ConsumerWorker(
                bus, [settings.topic(Topic.ITEMS)], group("items"), items.handle, name="items", **batched
            ),
            "events": ConsumerWorker(
                bus, [settings.topic(Topic.EVENTS_RAW)], group("events"), events.handle, name="events", **batched
            ),
            "erasure": ConsumerWorker(
                bus, [settings.topic(Topic.ERASURE)], group("erasure"), erasure.handle, name="erasure", **retries
            ),
        }
        return cls(backends, events, items, erasure, workers)

    def start(self) -> None:
        for worker in self.workers.values():
            worker.start()

    async def stop(self) -> None:
        for worker in self.workers.values():
            await worker.stop()
        await self.backends.close()

    async def stats(self, lag: bool = True) -> dict[str, Any]:
        """Counters of this process, as :data:`COUNTS` and per worker :data:`WORKER_COUNTS`, running, failing.

        ``lag=False`` leaves the bus out (lag 0): readiness must not wait on a broker that is rebalancing."""
        workers = {
            name: {
                "processed": w.processed,
                "dead_lettered": w.dead_lettered,
                "lag": await w.lag() if lag else 0,
                "running": w.running,
                "failing": w.failing,
            }
            for name, w in self.workers.items()
        }
        return {
            "workers": workers,
            "events_stored": self.events.stored,
            "duplicates_dropped": self.events.duplicates,
            "dropped_after_erasure": self.events.dropped_erased,
            "items_stored": self.items.stored,
            "users_erased": self.erasure.erased,
            "timeline_memo_entries": self.events.memo_entries_held,
        }


def add_stats(parts: Sequence[dict[str, Any]], retired: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The processes' stats as one: counts summed, a worker running only if it runs in every process and
    failing if it fails in any.  ``retired``: what exited processes had counted (counts only)."""
    total: dict[str, Any] = dict.fromkeys(COUNTS, 0)
    workers: dict[str, dict[str, Any]] = {}
    for part in [*parts, *retired]:
        for name in COUNTS:
            total[name] += part.get(name, 0)
        for name, w in part.get("workers", {}).items():
            into = workers.setdefault(name, {**dict.fromkeys(WORKER_COUNTS, 0), "running": True, "failing": False})
            for count in WORKER_COUNTS:
                into[count] += w.get(count, 0)
            into["running"] = into["running"] and w.get("running", True)
            into["failing"] = into["failing"] or w.get("failing", False)
    total["workers"] = workers
    return total


# ---------------------------------------------------------------- WORKERS > 1: child processes


def _child_main(settings: PreprocessorSettings, conn: Connection, index: int) -> None:
    """A child process: one pipeline until the parent says stop or goes away (the pipe closes)."""
    # Ctrl-C reaches the whole process group: the parent decides when its children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    asyncio.run(_child(settings, conn, index))


async def _child(settings: PreprocessorSettings, conn: Connection, index: int) -> None:
    bootstrap(settings)
    pipeline = await Pipeline.open(settings)
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    log.info("consumer process %d (pid %d) started", index, multiprocessing.current_process().pid)
    try:
        with long_lived_heap(young_threshold=BATCH_GC_THRESHOLD):
            pipeline.start()
            conn.send(("started", None))
            while True:
                await readable.wait()
                readable.clear()
                while conn.poll():
                    try:
                        request, number = conn.recv()
                    except (EOFError, OSError):
                        return  # the parent is gone
                    if request == "stop":
                        return
                    if request in ("stats", "state"):
                        conn.send((number, await pipeline.stats(lag=request == "stats")))
    finally:
        loop.remove_reader(conn.fileno())
        await pipeline.stop()
        log.info("consumer process %d stopped", index)


@dataclass
class _Child:
    index: int
    process: Any  # multiprocessing's SpawnProcess
    conn: Connection
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: bool = False  # its pipeline is open and consuming
    asked: int = 0  # stats requests sent: an answer that comes after its request gave up is skipped
    last: dict[str, Any] | None = None  # its last answer: what it had counted, kept if it dies


class ChildPipelines:
    """``WORKERS`` child processes, each running a :class:`Pipeline`; started again when one exits."""

    def __init__(self, settings: PreprocessorSettings, count: int, *, restart_after_s: float = 1.0) -> None:
        self.settings = settings
        self.count = count
        self.restart_after_s = restart_after_s
        self.restarts = 0
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads and sockets
        self._children: list[_Child] = []
        self._retired: list[dict[str, Any]] = []  # what exited children had counted
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    def _spawn(self, index: int) -> _Child:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_child_main, args=(self.settings, child, index), name=f"preprocessor-consumers-{index}", daemon=True
        )
        process.start()
        child.close()
        return _Child(index, process, parent)

    async def start(self) -> None:
        self._children = [self._spawn(i) for i in range(self.count)]
        self._watch = asyncio.create_task(self._watch_children())

    async def _watch_children(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.restart_after_s)
            for i, child in enumerate(self._children):
                if child.process.is_alive() or self._stopping:
                    continue
                log.error(
                    "consumer process %d exited (code %s); starting it again", child.index, child.process.exitcode
                )
                if child.last is not None:
                    self._retired.append(_counts_only(child.last))
                child.conn.close()
                self._children[i] = self._spawn(child.index)
                self.restarts += 1

    def _ask(self, child: _Child, what: str = "stats") -> dict[str, Any] | None:
        """A child's stats; None while it is starting (not asked: its backends may take long to open), or
        when it does not answer in time (dead, or its loop blocked for that long)."""
        with child.lock:
            try:
                if not child.started:
                    if not child.conn.poll() or child.conn.recv()[0] != "started":
                        return None
                    child.started = True
                child.asked += 1
                child.conn.send((what, child.asked))
                deadline = time.monotonic() + _ANSWER_S
                while (left := deadline - time.monotonic()) > 0 and child.conn.poll(left):
                    number, value = child.conn.recv()
                    if number == child.asked:
                        if what == "stats":
                            child.last = value
                        return value
            except (EOFError, OSError):
                return None
        return None

    async def stats(self, lag: bool = True) -> dict[str, Any]:
        """Every child's stats added up (asked now, in parallel); a child that is starting or does not
        answer counts what it last said, with its workers not running (and failing, if it was started).
        ``lag=False``: without asking the bus (readiness)."""
        children = list(self._children)
        what = "stats" if lag else "state"
        answers = await asyncio.gather(*(asyncio.to_thread(self._ask, c, what) for c in children))
        parts = []
        for child, answer in zip(children, answers, strict=True):
            if answer is None:
                last = child.last or {}
                state = {"running": False, "failing": child.started}
                workers = last.get("workers") or {n: {} for n in STREAMS}
                answer = {**last, "workers": {n: {**w, **state} for n, w in workers.items()}}
            parts.append(answer)
        return add_stats(parts, self._retired)

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        await asyncio.to_thread(self._stop_all)

    def _stop_all(self) -> None:
        for child in self._children:
            with child.lock, contextlib.suppress(OSError, ValueError):  # already gone
                child.conn.send(("stop", 0))
        deadline = time.monotonic() + _STOP_S
        for child in self._children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                log.warning("consumer process %d did not stop within %.0f s: killed", child.index, _STOP_S)
                child.process.kill()
                child.process.join(5)
            child.conn.close()


def _counts_only(stats: dict[str, Any]) -> dict[str, Any]:
    """What an exited child counted: no lag (its partitions' lag is now another's), no memo, no state."""
    return {
        **{name: stats.get(name, 0) for name in COUNTS if name != "timeline_memo_entries"},
        "workers": {
            n: {"processed": w.get("processed", 0), "dead_lettered": w.get("dead_lettered", 0)}
            for n, w in stats.get("workers", {}).items()
        },
    }
