"""Ingest path throughput against the least work that could do the same job, measured in the same run.

    .venv/bin/python benchmarks/ingest_throughput.py [--users 3000] [--items 1500]
        [--hbase-url hbase://127.0.0.1:19090] [--hbase-events 20000]
        [--http-batch 100] [--connections 8] [--duration 10] [--collector-workers 1,2]
        [--kafka-url kafka://127.0.0.1:19092] [--skip preprocessor,hbase,http,kafka]

Prints one row per stage: events/s of the platform code, of its floor, and their ratio.

* **bus append**: the embedded bus's producer (``SqliteEventBus``, ``synchronous=FULL``) against
  plain ``executemany`` into one SQLite table with the same durability, batches of 1,000.
* **preprocessor, embedded**: ``EventsConsumer.handle`` over the whole shop on the SQLite store
  (dedupe, histories, counters, point-in-time examples onto the bus) against ``executemany`` of
  one row per event into one SQLite table (``synchronous=NORMAL``, as the store runs).
* **preprocessor service, WORKERS=1, 2 and 4**: the service itself (``python -m scalerec_preprocessor``,
  embedded backends) with one, two and four consumer processes, over the whole shop put on its bus
  first: reading the bus, committing offsets, the three consumers; events/s from the first event
  stored to the last as ``/v1/stats`` reports them, against the same raw SQLite floor.
* **preprocessor, HBase**: the same consumer on a real HBase (the stack's Thrift server; start it
  with ``scripts/stack/stack.sh up hbase thrift``), in a namespace of its own that is dropped at
  the end, over the first ``--hbase-events`` events; the floor is happybase batches
  (``mutateRows``) of one cell per event into one table of that namespace.
* **collector HTTP**: the real collector app (``python -m scalerec_collector``, uvicorn, API key
  auth on, the embedded bus; one row per ``--collector-workers``, 1 and 2) driven by ``wrk`` posting batches of ``--http-batch`` distinct events
  as clients send them, against the bus append at that batch size measured in the same run.  A
  bare FastAPI app that reads the same bodies and answers 202, under the same ``wrk``, is printed
  as the generator's ceiling: it proves the load generator is not the bottleneck.
* **Kafka** (the chart's bus; the stack's broker: ``scripts/stack/stack.sh up kafka``): the Kafka bus's
  ``send_batch`` against aiokafka's own producer (the same one, acks=all and idempotent, ``send`` per
  message and one ``gather`` a batch) over the whole shop in batches of ``--http-batch``; unless the
  HBase stage is skipped, the preprocessor service on those events as the chart runs it (Kafka and
  HBase, one consumer process) against the HBase stage's raw ``mutateRows``; then the collector with
  ``BUS_URL=kafka://…`` under the same ``wrk`` against that bus append.  The rows run in a deployment
  (topic and table prefix) of their own whose topics and tables are deleted at the end.

The machine's load (``uptime``) is printed with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import httpx
from ranker_throughput import busiest_share, cpu_ticks, stop, wait_ready, worker_pids
from scalerec_adapters.bus import Message, OutgoingMessage
from scalerec_adapters.cache import CacheKeys
from scalerec_adapters.embedded.memory_cache import MemoryCache
from scalerec_adapters.embedded.sqlite_bus import SqliteEventBus
from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_adapters.factory import make_bus
from scalerec_adapters.store import TableSpec, WideColumnStore
from scalerec_core.service import free_port, long_lived_heap
from scalerec_events.models import Event
from scalerec_events.topics import Topic, TopicSpec, topic_name
from scalerec_preprocessor.consumers.events import BATCH_GC_THRESHOLD, EventsConsumer
from scalerec_storage import schema as s
from scalerec_synthetic import ShopConfig, generate_shop

if TYPE_CHECKING:
    from scalerec_adapters.hbase_store import HBaseStore

API_KEY = "bench-ingest-key"
PLACEHOLDER = "@R@"

# Cycles through pre-rendered bodies; every request makes its event ids unique (run, thread, request number),
# so the collector's dedupe never sees a repeat. Totals travel through thread globals, as in ranker_throughput.
WRK_SCRIPT = textwrap.dedent(
    """
    local bodies = {}
    for line in io.lines(os.getenv("BENCH_BODIES")) do table.insert(bodies, line) end
    local key = os.getenv("BENCH_KEY")
    local run = os.getenv("BENCH_RUN")
    local threads = {}
    local started = 0
    setup = function(thread)
      started = started + 1
      thread:set("tid", started)
      table.insert(threads, thread)
    end
    tid = 0
    n, accepted, answers = 0, 0, 0
    request = function()
      n = n + 1
      local body = string.gsub(bodies[(n % #bodies) + 1], "@R@", run .. "-" .. tid .. "-" .. n .. "-")
      return wrk.format("POST", "/v1/events", {["Content-Type"] = "application/json", ["X-API-Key"] = key}, body)
    end
    response = function(status, headers, body)
      answers = answers + 1
      if status == 202 then
        local a = string.match(body, '"accepted":(%d+)')
        if a then accepted = accepted + tonumber(a) end
      end
    end
    done = function(summary, latency, requests)
      local a, r = 0, 0
      for _, t in ipairs(threads) do a = a + t:get("accepted"); r = r + t:get("answers") end
      io.write(string.format("BENCH %d %d %.3f %.3f %d %d\\n", summary.requests, summary.duration,
        latency:percentile(50) / 1000, latency:percentile(99) / 1000, a, r))
      io.write(string.format("ERRORS %d %d %d %d %d\\n", summary.errors.connect, summary.errors.read,
        summary.errors.write, summary.errors.status, summary.errors.timeout))
    end
    """
)

# The generator's ceiling: what uvicorn + FastAPI give for reading the same bodies and answering 202.
FLOOR_APP = textwrap.dedent(
    """
    import os
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    BODY = ('{"accepted":%s,"duplicates":0,"rejected":0,"errors":[]}' % os.environ["BENCH_BATCH"]).encode()
    app = FastAPI()

    @app.post("/v1/events", status_code=202)
    async def events(request: Request) -> Response:
        await request.body()
        return Response(BODY, status_code=202, media_type="application/json")
    """
)


@dataclass
class Row:
    stage: str
    rate: float
    floor: float
    floor_name: str
    note: str = ""


@dataclass
class HttpRun:
    events_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    # With WORKERS > 1: the busiest worker's share of the workers' CPU (1/N = balanced).
    busiest: float | None = None


def _raw_insert(path: Path, rows: list[tuple[bytes, bytes]], batch: int, synchronous: str) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("CREATE TABLE t (k BLOB PRIMARY KEY, v BLOB)")
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO t VALUES (?, ?)", rows[i : i + batch])
        db.execute("COMMIT")
    took = time.perf_counter() - started
    db.close()
    return took


async def _bus_append(path: Path, payloads: list[tuple[bytes, bytes]], batch: int) -> float:
    """Events/s of the embedded bus's producer appending ``payloads`` in batches of ``batch``."""
    bus = SqliteEventBus(path)
    await bus.start()
    producer = bus.producer()
    topic = topic_name(Topic.EVENTS_RAW)
    started = time.perf_counter()
    for i in range(0, len(payloads), batch):
        await producer.send_batch(topic, [OutgoingMessage(v, k) for k, v in payloads[i : i + batch]])
    took = time.perf_counter() - started
    await bus.close()
    return len(payloads) / took


async def _preprocess(
    store: WideColumnStore, bus_path: Path, payloads: list[tuple[bytes, bytes]]
) -> tuple[float, float]:
    """(events/s, CPU µs of this process per event) of the events consumer over ``payloads`` in batches of
    2,000 (the default POLL_MAX_RECORDS).  The CPU figure counts every thread of this process, not the
    servers': it moves little when other jobs share the machine, the rate does."""
    bus = SqliteEventBus(bus_path)
    await bus.start()
    consumer = EventsConsumer(
        store, MemoryCache(), CacheKeys("bench"), bus.producer(), 50, 3600, examples_topic=topic_name(Topic.EXAMPLES)
    )
    topic = topic_name(Topic.EVENTS_RAW)
    messages = [Message(topic, 0, i, k, v) for i, (k, v) in enumerate(payloads)]
    with long_lived_heap(young_threshold=BATCH_GC_THRESHOLD):  # as the service runs it
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(messages), 2000):
            await consumer.handle(messages[i : i + 2000])
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
    await bus.close()
    if consumer.stored != len({(e.user_id, e.event_id) for e in (Event.model_validate_json(v) for _, v in payloads)}):
        raise RuntimeError(f"the consumer stored {consumer.stored} of {len(payloads)} events")
    return len(payloads) / took, cpu / len(payloads) * 1e6


def _service(tmp: Path, payloads: list[tuple[bytes, bytes]], workers: int) -> float:
    """Events/s of the preprocessor service (``python -m scalerec_preprocessor``, embedded backends) with
    ``WORKERS`` consumer processes, over ``payloads`` already on its bus (see :func:`_run_preprocessor`)."""
    data = tmp / f"service-{workers}"
    data.mkdir()
    asyncio.run(_bus_append(data / "bus.db", payloads, 1000))
    env = {"DATA_DIR": str(data), "WORKERS": str(workers)}
    return _run_preprocessor(env, len(payloads), tmp / f"service-{workers}.log", f"WORKERS={workers}")


def _run_preprocessor(env: dict[str, str], n: int, log: Path, label: str) -> float:
    """Start the preprocessor service with ``env`` over ``n`` events already on its bus; events/s from the
    first event stored to the last, as its ``/v1/stats`` reports them (polled every 50 ms; a run too short
    for two polls is timed from the service's first answer, start-up included)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "AUTH": "disabled", "LOG_LEVEL": "WARNING", **env}
    proc = _serve([sys.executable, "-m", "scalerec_preprocessor"], env, log)
    try:
        wait_ready(url, proc)
        first = (time.perf_counter(), 0)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            stats = httpx.get(f"{url}/v1/stats", timeout=30).json()
            now, done = time.perf_counter(), stats["events_stored"] + stats["duplicates_dropped"]
            if done >= n:
                return (done - first[1]) / (now - first[0])
            if done and not first[1]:
                first = (now, done)
            time.sleep(0.05)
        raise TimeoutError(f"{label}: not every event handled in 600 s")
    finally:
        stop(proc)


def _hbase_store(url: str, namespace: str) -> HBaseStore:
    """The stack's HBase (Thrift at ``url``) in ``namespace``, with a timeout long enough for bulk writes."""
    from scalerec_adapters.hbase_store import HBaseStore

    parsed = urlparse(url)
    return HBaseStore(parsed.hostname or "127.0.0.1", parsed.port or 9090, namespace=namespace, timeout_ms=60_000)


def _hbase_rows(url: str, payloads: list[tuple[bytes, bytes]]) -> tuple[float, float, float]:
    """(consumer events/s, its CPU µs per event, raw mutateRows events/s) on a real HBase, in a namespace
    dropped afterwards."""
    store = _hbase_store(url, f"bench_ingest_{uuid.uuid4().hex[:8]}")
    tmp = Path(tempfile.mkdtemp(prefix="scalerec-bench-hbase-"))
    try:
        store.ensure_tables([*s.tables(), TableSpec("raw", ("f",))])
        mine, cpu_us = asyncio.run(_preprocess(store, tmp / "bus.db", payloads))
        raw = [(b"%d" % i, {b"f:v": v}) for i, (_, v) in enumerate(payloads)]
        started = time.perf_counter()
        for i in range(0, len(raw), 2000):
            store.put_many("raw", raw[i : i + 2000])
        base = len(raw) / (time.perf_counter() - started)
        return mine, cpu_us, base
    finally:
        store.drop_tables()
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def _kafka_appends(
    url: str, deployment: str, payloads: list[tuple[bytes, bytes]], batch: int
) -> tuple[float, float]:
    """(events/s of the Kafka bus's ``send_batch``, events/s of aiokafka's own producer), ``payloads`` in
    batches of ``batch`` each way, alternating halves so that neither gets the broker's warmer half."""
    from scalerec_adapters.kafka_bus import KafkaEventBus

    bus = make_bus(url)
    assert isinstance(bus, KafkaEventBus)
    await bus.start()
    try:
        ours_topic, raw_topic = topic_name(Topic.EVENTS_RAW, deployment), f"{deployment}.raw-append"
        await bus.ensure_topics([TopicSpec(ours_topic, 4), TopicSpec(raw_topic, 4)])
        producer = bus.producer()
        raw = await bus._live_producer()  # the same aiokafka producer (acks=all, idempotent), used directly

        async def ours(part: list[tuple[bytes, bytes]], topic: str = ours_topic) -> float:
            started = time.perf_counter()
            for i in range(0, len(part), batch):
                await producer.send_batch(topic, [OutgoingMessage(v, k) for k, v in part[i : i + batch]])
            return time.perf_counter() - started

        async def floor(part: list[tuple[bytes, bytes]]) -> float:
            started = time.perf_counter()
            for i in range(0, len(part), batch):
                await asyncio.gather(*[await raw.send(raw_topic, v, key=k) for k, v in part[i : i + batch]])
            return time.perf_counter() - started

        await ours(payloads[:batch], raw_topic)  # warm-up (metadata, connections); the events topic gets each once
        await floor(payloads[:batch])
        half = len(payloads) // 2
        took_ours = await ours(payloads[:half]) + await ours(payloads[half:])
        took_raw = await floor(payloads[half:]) + await floor(payloads[:half])
        return len(payloads) / took_ours, len(payloads) / took_raw
    finally:
        await bus.close()


def _drop_kafka_deployment(url: str, deployment: str) -> None:
    """Delete the topics a Kafka row created (every name starts with its own deployment)."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def drop() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=urlparse(url).netloc)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics() if t.startswith(f"{deployment}.")]
            if names:
                await admin.delete_topics(names)
        finally:
            await admin.close()

    asyncio.run(drop())


def _kafka_rows(
    url: str,
    tmp: Path,
    shop_events: list[Event],
    batch: int,
    connections: int,
    duration: float,
    hbase: tuple[str, float] | None,
) -> list[Row]:
    """The Kafka bus against aiokafka alone; with ``hbase`` (its URL and raw ``mutateRows`` events/s) the
    preprocessor service on Kafka and HBase, over the events the bus row appended; and the collector on
    Kafka against the bus. In a deployment (topic prefix, HBase table prefix) of its own, deleted at the end."""
    deployment = f"bench{uuid.uuid4().hex[:8]}"
    payloads = [(e.user_id.encode(), e.model_dump_json().encode()) for e in shop_events]
    size = f"batches of {batch:,}"
    rows: list[Row] = []
    try:
        ours, raw = asyncio.run(_kafka_appends(url, deployment, payloads, batch))
        rows.append(
            Row(f"Kafka bus append, {size}", ours, raw, "aiokafka alone", f"{len(payloads):,} events, acks=all")
        )
        if hbase is not None:
            env = {
                "BUS_URL": url,
                "STORE_URL": hbase[0],
                "DEPLOYMENT": deployment,
                "DATA_DIR": str(tmp / f"{deployment}-preprocessor"),
                "WORKERS": "1",
            }
            rate = _run_preprocessor(env, len(payloads), tmp / f"{deployment}-preprocessor.log", "Kafka + HBase")
            rows.append(
                Row(
                    "preprocessor service, Kafka + HBase",
                    rate,
                    hbase[1],
                    "raw mutateRows",
                    f"{len(payloads):,} events, WORKERS=1; first to last event stored",
                )
            )
        files = _wrk_files(tmp, shop_events, batch)
        run = _collector(tmp, files, url, 1, batch, connections, duration, deployment=deployment)
        rows.append(
            Row(
                f"collector HTTP on Kafka, {size}, WORKERS=1",
                run.events_per_s,
                ours,
                "Kafka bus append",
                f"{connections} conns, p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, {run.errors} errors",
            )
        )
    finally:
        _drop_kafka_deployment(url, deployment)
        if hbase is not None:
            _drop_hbase_namespace(hbase[0], deployment)
    return rows


def _drop_hbase_namespace(url: str, namespace: str) -> None:
    store = _hbase_store(url, namespace)
    try:
        store.drop_tables()
    finally:
        store.close()


def _wrk(url: str, connections: int, duration: float, script: Path, bodies: Path) -> HttpRun:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s", str(script)]
    env = {**os.environ, "BENCH_BODIES": str(bodies), "BENCH_KEY": API_KEY, "BENCH_RUN": uuid.uuid4().hex[:8]}
    out = subprocess.run([*cmd, url], capture_output=True, text=True, env=env)
    m = re.search(r"^BENCH (\d+) (\d+) (\S+) (\S+) (\d+) (\d+)$", out.stdout, re.M)
    e = re.search(r"^ERRORS (\d+) (\d+) (\d+) (\d+) (\d+)$", out.stdout, re.M)
    if not m or not e:
        raise RuntimeError(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    seconds = int(m[2]) / 1e6
    return HttpRun(int(m[5]) / seconds, int(m[1]) / seconds, float(m[3]), float(m[4]), sum(map(int, e.groups())))


def _serve(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wrk_files(tmp: Path, shop_events: list[Event], batch: int) -> tuple[Path, Path]:
    """(wrk's script, its request bodies of ``batch`` events each), written once into ``tmp``."""
    bodies = tmp / f"bodies-{batch}.jsonl"
    script = tmp / "collector.lua"
    if not bodies.exists():
        with bodies.open("w") as f:
            for i in range(0, len(shop_events), batch):
                chunk = shop_events[i : i + batch]
                events = [json.loads(e.model_dump_json()) for e in chunk]
                for ev in events:
                    ev["event_id"] = PLACEHOLDER + ev["event_id"]
                f.write(json.dumps({"events": events}, separators=(",", ":")) + "\n")
        script.write_text(WRK_SCRIPT)
    return script, bodies


def _collector(
    tmp: Path,
    wrk_files: tuple[Path, Path],
    bus_url: str,
    workers: int,
    batch: int,
    connections: int,
    duration: float,
    deployment: str = "default",
) -> HttpRun:
    """The real collector (``python -m scalerec_collector``, ``WORKERS``, on ``bus_url``) under ``wrk``."""
    script, bodies = wrk_files
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    name = f"collector-{deployment}-{workers}"
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "PORT": str(port),
        "BUS_URL": bus_url,
        "DEPLOYMENT": deployment,
        "DATA_DIR": str(tmp / name),
        "AUTH": "enabled",
        "API_KEYS": f"{API_KEY}:ingest",
        "MAX_BATCH_EVENTS": str(max(1000, batch)),
        "WORKERS": str(workers),
    }
    proc = _serve([sys.executable, "-m", "scalerec_collector"], env, tmp / f"{name}.log")
    try:
        wait_ready(url, proc)
        _wrk(url, connections, 2, script, bodies)  # warm-up, not recorded
        pids = worker_pids(proc.pid)
        before = cpu_ticks(pids)
        run = _wrk(url, connections, duration, script, bodies)
        run.busiest = busiest_share(before, cpu_ticks(pids))
        return run
    finally:
        stop(proc)


def _http_rows(
    tmp: Path, shop_events: list[Event], batch: int, connections: int, duration: float, workers: Sequence[int]
) -> tuple[dict[int, HttpRun], HttpRun, float]:
    """(collector per WORKERS, floor app, bus append events/s at ``batch``): the collector's HTTP path in one run."""
    script, bodies = _wrk_files(tmp, shop_events, batch)
    collectors = {
        n: _collector(
            tmp, (script, bodies), f"sqlite:///{tmp / f'collector-bus-{n}.db'}", n, batch, connections, duration
        )
        for n in workers
    }

    fport = free_port()
    (tmp / "floor_app.py").write_text(FLOOR_APP)
    floor_cmd = [sys.executable, "-m", "uvicorn", "floor_app:app", "--port", str(fport), "--log-level", "warning"]
    floor_env = {
        **os.environ,
        "LOG_LEVEL": "WARNING",
        "BENCH_BATCH": str(batch),
        "PYTHONPATH": f"{tmp}:{os.environ.get('PYTHONPATH', '')}",
    }
    floor_proc = _serve([*floor_cmd, "--no-access-log"], floor_env, tmp / "floor.log")
    try:
        wait_ready(f"http://127.0.0.1:{fport}", floor_proc)
        floor = _wrk(f"http://127.0.0.1:{fport}", connections, duration, script, bodies)
    finally:
        stop(floor_proc)

    payloads = [(e.user_id.encode(), e.model_dump_json().encode()) for e in shop_events]
    append = asyncio.run(_bus_append(tmp / "append-bus.db", payloads, batch))
    return collectors, floor, append


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--items", type=int, default=1500)
    default_hbase = (
        f"hbase://{os.environ.get('SCALEREC_STACK_HOST', '127.0.0.1')}:"
        f"{os.environ.get('SCALEREC_HBASE_THRIFT_PORT', '19090')}"
    )
    ap.add_argument("--hbase-url", default=default_hbase, help="HBase Thrift server (default: the local stack's)")
    ap.add_argument("--hbase-events", type=int, default=20_000, help="events of the shop run into HBase")
    ap.add_argument("--http-batch", type=int, default=100, help="events per POST /v1/events")
    ap.add_argument("--connections", type=int, default=8, help="wrk connections to the collector")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of wrk load per HTTP row")
    ap.add_argument("--collector-workers", default="1,2", help="the collector's WORKERS, one HTTP row each")
    default_kafka = (
        f"kafka://{os.environ.get('SCALEREC_STACK_HOST', '127.0.0.1')}:{os.environ.get('SCALEREC_KAFKA_PORT', '19092')}"
    )
    ap.add_argument("--kafka-url", default=default_kafka, help="Kafka broker (default: the local stack's)")
    ap.add_argument("--skip", default="", help="comma-separated stages to leave out: preprocessor, hbase, http, kafka")
    args = ap.parse_args()
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    if not {"http", "kafka"} <= skip and shutil.which("wrk") is None:
        print("wrk is needed for the collector's HTTP row: apt-get install -y wrk", file=sys.stderr)
        return 2

    shop = generate_shop(ShopConfig(users=args.users, items=args.items))
    payloads = [(e.user_id.encode(), e.model_dump_json().encode()) for e in shop.events]
    n = len(payloads)
    tmp = Path(tempfile.mkdtemp(prefix="scalerec-bench-ingest-"))
    rows: list[Row] = []
    try:
        bus = asyncio.run(_bus_append(tmp / "bus.db", payloads, 1000))
        raw_s = _raw_insert(tmp / "raw_bus.db", [(b"%d" % i, v) for i, (_, v) in enumerate(payloads)], 1000, "FULL")
        rows.append(Row("bus append, batches of 1,000", bus, n / raw_s, "raw SQLite (FULL)"))

        if "preprocessor" not in skip:
            store = SqliteStore(tmp / "store.db")
            store.ensure_tables(s.tables())
            pre, cpu_us = asyncio.run(_preprocess(store, tmp / "pre-bus.db", payloads))
            store.close()
            raw = [(b"%d" % i, v) for i, (_, v) in enumerate(payloads)]
            raw_s = _raw_insert(tmp / "raw_store.db", raw, 2000, "NORMAL")
            note = f"{cpu_us:.0f} µs CPU/event"
            rows.append(Row("preprocessor, embedded (SQLite)", pre, n / raw_s, "raw SQLite (NORMAL)", note))

            for workers in (1, 2, 4):
                rate = _service(tmp, payloads, workers)
                stage = f"preprocessor service, WORKERS={workers}"
                rows.append(Row(stage, rate, n / raw_s, "raw SQLite (NORMAL)", "embedded; first to last event stored"))

        hbase: tuple[str, float] | None = None
        if "hbase" not in skip:
            part = payloads[: args.hbase_events]
            mine, cpu_us, base = _hbase_rows(args.hbase_url, part)
            note = f"{len(part):,} events, {cpu_us:.0f} µs CPU/event here"
            rows.append(Row("preprocessor, HBase", mine, base, "raw mutateRows", note))
            hbase = (args.hbase_url, base)

        if "http" not in skip:
            workers = [int(w) for w in args.collector_workers.split(",")]
            collectors, floor, append = _http_rows(
                tmp, shop.events, args.http_batch, args.connections, args.duration, workers
            )
            batch = f"batches of {args.http_batch:,}"
            for n, collector in collectors.items():
                rows.append(
                    Row(
                        f"collector HTTP, {batch}, WORKERS={n}",
                        collector.events_per_s,
                        append,
                        f"bus append, {batch}",
                        f"{args.connections} conns, p50 {collector.p50_ms:.1f} ms, p99 {collector.p99_ms:.1f} ms, "
                        f"{collector.errors} errors"
                        + ("" if collector.busiest is None else f", busiest worker {collector.busiest:.0%} of the CPU"),
                    )
                )
            best = max(c.events_per_s for c in collectors.values())
            rows.append(
                Row(
                    "  wrk ceiling: bare FastAPI reading the bodies",
                    floor.events_per_s,
                    best,
                    "collector (best)",
                    f"{floor.requests_per_s:,.0f} req/s, {floor.errors} errors",
                )
            )
        if "kafka" not in skip:
            rows += _kafka_rows(
                args.kafka_url, tmp, shop.events, args.http_batch, args.connections, args.duration, hbase
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n:,} events, {args.users:,} users, {args.items:,} items; peak RSS {rss_mb:,.0f} MB")
    print(f"load: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}\n")
    print(f"| {'stage':50s} | {'events/s':>9s} | {'floor':24s} | {'floor/s':>9s} | {'ratio':>6s} | note")
    print(f"|{'-' * 52}|{'-' * 11}|{'-' * 26}|{'-' * 11}|{'-' * 8}|------")
    for r in rows:
        ratio = r.rate / r.floor if r.floor else 0.0
        print(f"| {r.stage:50s} | {r.rate:9,.0f} | {r.floor_name:24s} | {r.floor:9,.0f} | {ratio:6.2f} | {r.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
