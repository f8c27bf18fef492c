"""Ingest path throughput on the embedded backends, against a raw-SQLite baseline in the same process.

    .venv/bin/python benchmarks/ingest_throughput.py [--users 3000] [--items 1500]

Prints one row per stage: events/s of the platform code and of the least work that
could do the same job (plain ``executemany`` into one SQLite table, same durability
settings), and their ratio — the price of the bus's offsets and consumer groups, and
of the preprocessor's dedupe, histories, counters and point-in-time examples.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sqlite3
import tempfile
import time
from pathlib import Path

from scalerec_adapters.bus import Message, OutgoingMessage
from scalerec_adapters.cache import CacheKeys
from scalerec_adapters.embedded.memory_cache import MemoryCache
from scalerec_adapters.embedded.sqlite_bus import SqliteEventBus
from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_cli.synthetic import ShopConfig, generate_shop
from scalerec_events.topics import Topic, topic_name
from scalerec_preprocessor.consumers.events import EventsConsumer
from scalerec_storage import schema as s


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


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--items", type=int, default=1500)
    args = ap.parse_args()
    shop = generate_shop(ShopConfig(users=args.users, items=args.items))
    payloads = [(e.user_id.encode(), e.model_dump_json().encode()) for e in shop.events]
    n = len(payloads)
    tmp = Path(tempfile.mkdtemp(prefix="scalerec-bench-"))
    rows = []

    bus = SqliteEventBus(tmp / "bus.db")
    await bus.start()
    started = time.perf_counter()
    producer = bus.producer()
    for i in range(0, n, 1000):
        await producer.send_batch(
            topic_name(Topic.EVENTS_RAW), [OutgoingMessage(v, k) for k, v in payloads[i : i + 1000]]
        )
    bus_s = time.perf_counter() - started
    raw_s = _raw_insert(tmp / "raw_bus.db", [(b"%d" % i, v) for i, (_, v) in enumerate(payloads)], 1000, "FULL")
    rows.append(("bus append (collector → log), batches of 1000", n / bus_s, n / raw_s))

    store = SqliteStore(tmp / "store.db")
    store.ensure_tables(s.tables())
    consumer = EventsConsumer(
        store, MemoryCache(), CacheKeys("bench"), producer, 50, 3600, examples_topic=topic_name(Topic.EXAMPLES)
    )
    messages = [Message(topic_name(Topic.EVENTS_RAW), 0, i, k, v) for i, (k, v) in enumerate(payloads)]
    started = time.perf_counter()
    for i in range(0, n, 2000):
        await consumer.handle(messages[i : i + 2000])
    pre_s = time.perf_counter() - started
    raw_s = _raw_insert(tmp / "raw_store.db", [(b"%d" % i, v) for i, (_, v) in enumerate(payloads)], 2000, "NORMAL")
    rows.append(("preprocessor (dedupe, history, counters, examples)", n / pre_s, n / raw_s))
    await bus.close()
    store.close()

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n:,} events, {args.users:,} users, {args.items:,} items; peak RSS {rss_mb:,.0f} MB\n")
    print(f"| {'stage':52s} | {'events/s':>9s} | {'raw SQLite/s':>12s} | {'ratio':>6s} |")
    print(f"|{'-' * 54}|{'-' * 11}|{'-' * 14}|{'-' * 8}|")
    for name, mine, base in rows:
        print(f"| {name:52s} | {mine:9,.0f} | {base:12,.0f} | {mine / base:6.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
