"""One running pipeline (all five services as processes, embedded backends) shared by the e2e tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scalerec_adapters.factory import make_store
from scalerec_cli import driver
from scalerec_cli.cluster import LocalCluster
from scalerec_storage import records as r
from scalerec_synthetic import Shop

from tests.pipeline_shop import pipeline_shop


@dataclass
class Pipeline:
    cluster: LocalCluster
    shop: Shop
    ingested: dict[str, int]
    stats: dict[str, Any]
    stored_after_ingest: int
    job: dict[str, Any]
    report: dict[str, Any]

    def url(self, service: str) -> str:
        return self.cluster.url(service)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    data_dir: Path = tmp_path_factory.mktemp("pipeline")
    shop = pipeline_shop()
    cluster = LocalCluster(data_dir, env={"MODEL_SIZE": "demo", "TRAIN_AFTER_EXAMPLES": "0", "AUTH": "disabled"})
    cluster.start_all()
    try:
        asyncio.run(driver.post_batches(f"{cluster.url('collector')}/v1/items", "items", shop.items, 500))
        ingested = asyncio.run(
            driver.post_batches(f"{cluster.url('collector')}/v1/events", "events", shop.events, 1000)
        )
        stats = driver.wait_preprocessed(cluster.url("preprocessor"), ingested["accepted"], timeout=300)
        store = make_store(f"sqlite:///{data_dir / 'store.db'}", namespace="scalerec")
        stored = r.count_interactions(store)  # before any test adds its own events
        store.close()
        job = driver.train(cluster.url("trainer"), timeout=600)
        report = driver.wait_report(cluster.url("evaluator"), job["version"], timeout=300)
        if report["promoted"]:
            driver.wait_serving(cluster.url("ranker"), job["version"], timeout=120)
        yield Pipeline(cluster, shop, ingested, stats, stored, job, report)
    finally:
        cluster.stop_all()
