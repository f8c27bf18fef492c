"""The collector's HTTP path, in process: events/s through POST /v1/events against the least work that does the job.

    .venv/bin/python benchmarks/collector_throughput.py [--events 20000] [--batch 100] [--rounds 3]

The collector app is built as ``scalerec serve`` builds it (embedded SQLite bus in a temporary folder, API keys
on, the HTTP telemetry on) and sent POST /v1/events requests straight into its ASGI callable: no sockets and no
load generator, so what is measured is the collector's own code (routing, key check, body limit, per-event
validation, edge dedupe, the bus append) and not the server or the client. Each request carries ``--batch``
events of the synthetic shop with fresh event ids (so nothing is a duplicate) and must answer 202 with every
event accepted.

The floor runs in the same process on the same events and the same kind of bus: ``json.loads`` of the body,
``Event.model_validate`` of each event, ``model_dump_json`` and one ``send_batch`` a request — what any
collector must do, without HTTP. Rounds alternate floor and collector; the best of each is printed with the
ratio (1.0 = the collector costs nothing over the floor). Times are CPU time of the process
(``time.process_time``), so other jobs on a shared machine move them little.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from inprocess import App, request
from scalerec_adapters.bus import OutgoingMessage
from scalerec_adapters.embedded.sqlite_bus import SqliteEventBus
from scalerec_collector.config import CollectorSettings
from scalerec_collector.main import create_app
from scalerec_events.models import Event
from scalerec_events.topics import Topic, topic_name
from scalerec_synthetic import ShopConfig, generate_shop

KEY = "bench-key"


def bodies(events: list[dict[str, Any]], batch: int, round_: int) -> list[bytes]:
    """Request bodies of ``batch`` events each, with event ids of this round (never seen before)."""
    out = []
    for i in range(0, len(events), batch):
        chunk = [{**e, "event_id": f"{e['event_id']}-r{round_}"} for e in events[i : i + batch]]
        out.append(json.dumps({"events": chunk}).encode())
    return out


async def post(app: App, body: bytes) -> None:
    status, answer = await request(
        app,
        "POST",
        "/v1/events",
        body=body,
        headers=[
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-api-key", KEY.encode()),
        ],
        port=8081,
    )
    if status != 202 or json.loads(answer)["rejected"]:
        raise SystemExit(f"HTTP {status}: {answer[:300]!r}")


async def collector_round(app: Any, requests: list[bytes]) -> float:
    started = time.process_time()
    for body in requests:
        await post(app, body)
    return time.process_time() - started


async def floor_round(bus: SqliteEventBus, requests: list[bytes]) -> float:
    producer = bus.producer()
    topic = topic_name(Topic.EVENTS_RAW)
    started = time.process_time()
    for body in requests:
        events = [Event.model_validate(e) for e in json.loads(body)["events"]]
        await producer.send_batch(
            topic, [OutgoingMessage(e.model_dump_json().encode(), e.user_id.encode()) for e in events]
        )
    return time.process_time() - started


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000, help="events a round (taken from the synthetic shop)")
    ap.add_argument("--batch", type=int, default=100, help="events a request")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    shop = generate_shop(ShopConfig(users=1000, items=500, seed=7))
    events = [e.model_dump(mode="json") for e in shop.events[: args.events]]
    n = len(events)
    tmp = Path(tempfile.mkdtemp(prefix="scalerec-bench-collector-"))
    settings = CollectorSettings(data_dir=tmp / "collector", api_keys=KEY, max_batch_events=max(args.batch, 1000))
    app = create_app(settings)
    floor_bus = SqliteEventBus(tmp / "floor-bus.db")
    await floor_bus.start()
    best_floor = best_app = float("inf")
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        await post(app, bodies(events[:10], 10, -1)[0])  # warm-up: first request builds the routes' caches
        for r in range(args.rounds):
            best_floor = min(best_floor, await floor_round(floor_bus, bodies(events, args.batch, 2 * r)))
            best_app = min(best_app, await collector_round(app, bodies(events, args.batch, 2 * r + 1)))
    await floor_bus.close()
    print(f"{n:,} events a round in requests of {args.batch}; best of {args.rounds} rounds, CPU time\n")
    print(f"| {'path':58s} | {'events/s':>9s} | {'us/event':>8s} |")
    print(f"|{'-' * 60}|{'-' * 11}|{'-' * 10}|")
    print(
        f"| {'floor: json.loads, Event.model_validate, send_batch':58s} | {n / best_floor:9,.0f} | {best_floor / n * 1e6:8.1f} |"
    )
    print(
        f"| {'collector: POST /v1/events into the ASGI app':58s} | {n / best_app:9,.0f} | {best_app / n * 1e6:8.1f} |"
    )
    print(f"\nratio floor / collector (1.0 = free): {best_floor / best_app:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
