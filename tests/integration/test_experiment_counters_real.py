"""Per-variant counters are exact after a kill -9 of the evaluator in the middle of the stream.

Real Kafka and HBase (the shared stack), the evaluator as its own process: impressions and clicks of
an experiment flow in, the evaluator is killed -9 while it is part-way through them, restarted, and
the results it then reports count every impression and click exactly once.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path

import httpx
from scalerec_adapters.bus import OutgoingMessage
from scalerec_adapters.factory import make_bus, make_store
from scalerec_cli.cluster import LocalCluster
from scalerec_events.experiments import Assignment, Experiment
from scalerec_events.models import Context, Event, ImpressedItem, Impression
from scalerec_events.topics import Topic, topic_name
from scalerec_models import repository as repo

ADMIN = {"Authorization": "Bearer k-admin"}
REQUESTS = 6000


def _traffic(exp: Experiment) -> tuple[list[OutgoingMessage], list[OutgoingMessage], dict[str, dict[str, int]]]:
    assign, rng = Assignment(exp), random.Random(11)
    impressions, clicks = [], []
    expected = {v.name: {"impressions": 0, "clicks": 0, "clicked": 0} for v in exp.variants}
    now = int(time.time() * 1000)
    for n in range(REQUESTS):
        user = f"u{n % 2000}"
        variant = assign.variant_of(user)
        rid = f"r{uuid.uuid4().hex}"
        imp = Impression(
            request_id=rid,
            user_id=user,
            model_version=variant.model_version,
            experiment_id=exp.experiment_id,
            variant=variant.name,
            items=[ImpressedItem(item_id=f"i{j}", position=j, source="item_cf") for j in range(10)],
            ts_ms=now,
        )
        impressions.append(OutgoingMessage(imp.model_dump_json().encode(), user.encode()))
        expected[variant.name]["impressions"] += 1
        k = rng.choice([0, 0, 0, 1, 2])
        expected[variant.name]["clicks"] += k
        expected[variant.name]["clicked"] += bool(k)
        for j in range(k):
            ev = Event(
                event_id=f"{rid}-c{j}",
                user_id=user,
                item_id=f"i{j}",
                type="click",
                timestamp=time.time(),
                context=Context(request_id=rid, variant=variant.name, model_version=variant.model_version),
            )
            clicks.append(OutgoingMessage(ev.model_dump_json().encode(), user.encode()))
    return impressions, clicks, expected


def _counted(client: httpx.Client, experiment_id: str) -> dict[str, dict[str, int]]:
    res = client.get(f"/v1/experiments/{experiment_id}", headers=ADMIN, timeout=60).json()["results"]
    return {
        v["name"]: {"impressions": v["impressions"], "clicks": v["clicks"], "clicked": v["clicked_impressions"]}
        for v in res["variants"]
    }


def test_counters_are_exact_after_the_evaluator_is_killed_mid_stream(
    tmp_path: Path, shared_kafka: str, shared_hbase: tuple[str, int]
) -> None:
    deployment = f"exp{uuid.uuid4().hex[:10]}"
    bus_url = f"kafka://{shared_kafka}"
    store_url = f"hbase://{shared_hbase[0]}:{shared_hbase[1]}"
    repository = tmp_path / "model_repository"
    for v in (1, 2):
        (repository / repo.RANKER_MODEL / str(v)).mkdir(parents=True)
    repo.write_champion(repository, repo.RANKER_MODEL, 1)
    cluster = LocalCluster(
        tmp_path,
        env={
            "BUS_URL": bus_url,
            "STORE_URL": store_url,
            "DEPLOYMENT": deployment,
            "API_KEYS": "k-admin:admin",
            "TOPIC_PARTITIONS": "3",
        },
        services=("evaluator",),
    )
    try:
        cluster.start_all(timeout=180)
        client = httpx.Client(base_url=cluster.url("evaluator"))
        spec = {
            "variants": [
                {"name": "champion", "model_version": 1, "share": 0.6},
                {"name": "challenger", "model_version": 2, "share": 0.4},
            ]
        }
        created = client.post("/v1/experiments", json=spec, headers=ADMIN, timeout=60)
        assert created.status_code == 201, created.text
        exp = Experiment.model_validate(created.json())
        impressions, clicks, expected = _traffic(exp)

        async def publish() -> None:
            bus = make_bus(bus_url, partitions=3, client_id="exp-test")
            await bus.start()
            try:
                producer = bus.producer()
                # Interleaved in slices, so the kill falls between an impression and its clicks too.
                for start in range(0, REQUESTS, 500):
                    await producer.send_batch(
                        topic_name(Topic.IMPRESSIONS, deployment), impressions[start : start + 500]
                    )
                    await producer.send_batch(
                        topic_name(Topic.EVENTS_RAW, deployment), clicks[start // 2 : (start + 500) // 2 + 1]
                    )
                await producer.send_batch(topic_name(Topic.EVENTS_RAW, deployment), clicks)  # the rest, and re-sends
            finally:
                await bus.close()

        asyncio.run(publish())
        # Killed -9 once part of the stream is stored, not before and not after.
        deadline = time.monotonic() + 120
        while True:
            stored = sum(v["impressions"] for v in _counted(client, exp.experiment_id).values())
            if stored > 0:
                break
            assert time.monotonic() < deadline, "the evaluator stored nothing"
            time.sleep(0.05)
        cluster.stop("evaluator", kill=True)
        assert stored < REQUESTS, f"all {stored} stored before the kill: not mid-stream"

        cluster.start("evaluator")
        cluster.wait_ready("evaluator", timeout=180)
        deadline = time.monotonic() + 180
        while (counted := _counted(client, exp.experiment_id)) != expected:
            assert time.monotonic() < deadline, f"counted {counted}, sent {expected}"
            time.sleep(1)
        # Stays exact: nothing counted twice once the group has caught up.
        time.sleep(3)
        assert _counted(client, exp.experiment_id) == expected
    finally:
        cluster.stop_all()
        store = make_store(store_url, namespace=deployment)
        drop = getattr(store, "drop_tables", None)
        if drop is not None:
            drop()
        store.close()
