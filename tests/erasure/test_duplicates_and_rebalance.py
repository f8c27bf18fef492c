"""Duplicates and rebalances (issue 11, test 3), on the shared Kafka, HBase and Memcached.

The same batch through two collectors; the same event id under two users; a preprocessor replica
paused (SIGSTOP) past its Kafka session timeout, so the group moves its partition to the other
replica while it still holds a batch, then resumed; then a replica killed (SIGKILL) in the middle of
a backlog and started again.  Afterwards every accepted event is exactly one interaction and exactly
one item-counter cell, and the item scores equal what the accepted events add up to.
"""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from scalerec_events.models import EventType
from scalerec_storage import records as r
from scalerec_storage import schema as s

from tests.erasure.conftest import Deployment, post_events
from tests.integration.conftest import HOST, KAFKA_PORT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ITEMS = [f"item-{n}" for n in range(30)]
SESSION_TIMEOUT_MS = 6000


def _events(tag: str, users: list[str], n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = datetime.now(UTC).isoformat()
    return [
        {
            "event_id": f"{tag}-{i}",
            "user_id": rng.choice(users),
            "item_id": rng.choice(ITEMS),
            "type": rng.choice(["view", "click", "add_to_cart", "purchase"]),
            "timestamp": now,
        }
        for i in range(n)
    ]


def _stored(dep: Deployment, users: list[str]) -> Counter[tuple[str, str]]:
    store = dep.store()
    try:
        return Counter(
            (u, s.last_part(k)) for u in users for k, _ in store.scan(s.INTERACTIONS, prefix=s.user_prefix(u))
        )
    finally:
        store.close()


def _lag(dep: Deployment, name: str) -> int:
    return int(httpx.get(f"{dep.procs[name].url}/v1/stats", timeout=10).json()["workers"]["events"]["lag"])


def test_duplicates_pauses_and_kills_leave_exact_counts(deployment: Deployment) -> None:
    dep = deployment
    tag = uuid.uuid4().hex[:6]
    users = [f"d{n}-{tag}" for n in range(24)]
    bus = f"kafka://{HOST}:{KAFKA_PORT}?session_timeout_ms={SESSION_TIMEOUT_MS}&heartbeat_interval_ms=1000"
    for name in ("c1", "c2"):
        dep.start(name, "collector")
    for name in ("p1", "p2"):
        dep.start(name, "preprocessor", BUS_URL=bus)
    dep.wait_ready("c1", "c2", "p1", "p2")
    accepted: dict[tuple[str, str], dict[str, Any]] = {}

    with httpx.Client(timeout=30) as client:
        # 1. The same batch through both collectors at once (each has its own memory of recent ids).
        batch = _events(f"dup{tag}", users, 300, seed=1)
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(lambda c: post_events(dep.procs[c].url, batch, httpx.Client(timeout=30)), ["c1", "c2"])
            )
        assert [a["accepted"] for a in answers] == [300, 300]  # neither collector saw the other's copy
        accepted.update({(e["user_id"], e["event_id"]): e for e in batch})
        # 2. One event id under two users: two events; and re-sent to both collectors.
        shared = [
            {
                "event_id": f"same{tag}-{n}",
                "user_id": u,
                "item_id": ITEMS[n],
                "type": "click",
                "timestamp": datetime.now(UTC).isoformat(),
            }
            for n in range(10)
            for u in users[:2]
        ]
        for c in ("c1", "c2", "c1"):
            post_events(dep.procs[c].url, shared, client)
        accepted.update({(e["user_id"], e["event_id"]): e for e in shared})

    # 3. A backlog, a pause past the session timeout, a kill in the middle of a batch.
    backlog = _events(f"load{tag}", users, 4000, seed=2)
    accepted.update({(e["user_id"], e["event_id"]): e for e in backlog})
    errors: list[BaseException] = []
    # The second half is held back until p1 wakes up, then sent at once: p2 then has a backlog to be
    # killed in however fast this machine drains the first half.
    second_half = threading.Event()

    def send() -> None:
        try:
            with httpx.Client(timeout=30) as client:
                for i in range(0, len(backlog), 100):
                    if i == len(backlog) // 2:
                        second_half.wait(120)
                    post_events(dep.procs["c1" if i % 200 else "c2"].url, backlog[i : i + 100], client)
                    if i < len(backlog) // 2:
                        time.sleep(0.05)
        except BaseException as exc:
            errors.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    time.sleep(2.0)
    dep.procs["p1"].signal(signal.SIGSTOP)  # holds its batch; the group hands its partition to p2
    time.sleep(SESSION_TIMEOUT_MS / 1000 + 6)
    dep.procs["p1"].signal(signal.SIGCONT)  # wakes up fenced: its commit fails, its writes are redone
    second_half.set()
    deadline = time.monotonic() + 60
    while _lag(dep, "p2") == 0:
        assert time.monotonic() < deadline, "no backlog on p2 to kill it in"
        time.sleep(0.05)
    dep.stop("p2", signal.SIGKILL)
    sender.join(180)
    assert not errors, errors
    dep.start("p3", "preprocessor", BUS_URL=bus)
    dep.wait_ready("p3")
    dep.wait_drained("p1", "p3")

    stored = _stored(dep, users)
    twice = [k for k, n in stored.items() if n > 1]
    assert not twice, f"{len(twice)} events stored twice"
    assert set(stored) == set(accepted), (
        f"missing {len(set(accepted) - set(stored))}, never accepted {len(set(stored) - set(accepted))}"
    )
    # Item counters: one cell per accepted event, and the scores they add up to.
    store = dep.store()
    try:
        cells = sum(len(c) for _, c in store.scan(s.ITEM_DAILY))
        scores = r.item_scores(store)
    finally:
        store.close()
    assert cells == len(accepted)
    expected: Counter[str] = Counter()
    for e in accepted.values():
        expected[e["item_id"]] += r.TYPE_WEIGHTS[EventType(e["type"])]
    assert scores == pytest.approx(dict(expected))
