"""The ranker in process on a real (tiny) trained model: recommendations, hot swap under load, degradation."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_adapters.scoring import ScorerUnavailable
from scalerec_adapters.store import StoreUnavailable
from scalerec_cli.synthetic import Shop, ShopConfig, generate_shop
from scalerec_models import repository as repo
from scalerec_ranker.config import RankerSettings
from scalerec_ranker.main import create_app
from scalerec_storage import schema as s
from scalerec_trainer.config import TrainerSettings
from scalerec_trainer.pipeline import train_version

from tests.unit.services.ingest import ingest_shop


@dataclass
class World:
    data_dir: Path
    repository: Path
    shop: Shop


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    data_dir = tmp_path_factory.mktemp("ranker")
    shop = generate_shop(ShopConfig(users=200, items=120, events_per_user=20, seed=3))
    asyncio.run(ingest_shop(data_dir, shop))
    repository = data_dir / "model_repository"
    settings = TrainerSettings(
        data_dir=data_dir, model_repository=repository, min_examples=10, max_epochs=2, time_budget_s=10
    )
    store = SqliteStore(data_dir / "store.db")
    outcome = train_version(settings, store)
    store.close()
    assert outcome.version == 1
    # Version 2: the same files under a new number — the swap mechanism is what is under test here.
    for model in (repo.RANKER_MODEL, repo.USER_TOWER_MODEL):
        shutil.copytree(repository / model / "1", repository / model / "2")
    repo.write_champion(repository, repo.RANKER_MODEL, 1)
    return World(data_dir, repository, shop)


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    settings = RankerSettings(data_dir=world.data_dir, model_repository=world.repository, scoring_timeout_ms=5000)
    with TestClient(create_app(settings)) as c:
        yield c


def _user_with_purchase(shop: Shop) -> tuple[str, set[str]]:
    bought: dict[str, set[str]] = {}
    for e in shop.events:
        if e.type.value == "purchase":
            bought.setdefault(e.user_id, set()).add(e.item_id)
    user = max(bought, key=lambda u: len(bought[u]))
    return user, bought[user]


def test_a_known_user_gets_scored_explained_recommendations(client: TestClient, world: World) -> None:
    user, bought = _user_with_purchase(world.shop)
    r = client.get("/v1/recommendations", params={"user_id": user, "k": 10, "device": "mobile"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == 1 and body["fallback"] is False and body["scorer"] == "onnxruntime"
    assert len(body["items"]) == 10
    assert not {i["item_id"] for i in body["items"]} & bought
    history = {e.item_id for e in world.shop.events if e.user_id == user}
    assert {i["source"] for i in body["items"]} <= {"retrieval", "item_cf", "trending", "fresh"}
    explained = [i for i in body["items"] if i["because"]]
    assert explained and all(set(i["because"]) <= history for i in explained)
    assert all(i["reason"] for i in body["items"])


def test_swap_under_concurrent_load_drops_no_request(client: TestClient, world: World) -> None:
    users = world.shop.users[:40]

    def ask(n: int) -> tuple[int, int | None]:
        r = client.get("/v1/recommendations", params={"user_id": users[n % len(users)], "k": 5})
        return r.status_code, r.json().get("model_version")

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, n) for n in range(120)]
        assert client.portal.call(client.app.state.models.activate, 2)  # type: ignore[union-attr]
        futures += [pool.submit(ask, n) for n in range(120, 200)]
        results = [f.result() for f in futures]
    assert all(status == 200 for status, _ in results)
    versions = {v for _, v in results}
    assert versions <= {1, 2} and 2 in versions
    assert client.get("/v1/model").json()["model_version"] == 2


def test_a_broken_scorer_falls_back_to_the_baseline_flagged(client: TestClient, world: World) -> None:
    async def broken(*args: object, **kwargs: object) -> dict:
        raise ScorerUnavailable("scorer down for the test")

    client.app.state.scorer.infer = broken  # type: ignore[union-attr]
    r = client.get("/v1/recommendations", params={"user_id": world.shop.users[3], "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["fallback"] is True and body["scorer"] == "baseline"
    assert "scorer unavailable" in body["fallback_reason"] and len(body["items"]) == 5


def test_a_store_outage_degrades_to_the_flagged_fallback(client: TestClient, world: World) -> None:
    def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("store down for the test")

    client.app.state.store.scan = down  # type: ignore[union-attr]
    client.app.state.cache.get = lambda key: None  # type: ignore[union-attr]
    r = client.get("/v1/recommendations", params={"user_id": world.shop.users[7], "k": 5})
    assert r.status_code == 200
    assert r.json()["fallback"] is True and r.json()["history_source"] == "unavailable"


def test_similar_items_and_unknown_items(client: TestClient, world: World) -> None:
    known = world.shop.events[0].item_id
    r = client.get(f"/v1/items/{known}/similar", params={"k": 5})
    assert r.status_code == 200 and r.json()["items"]
    r = client.get("/v1/items/nope/similar")
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_the_fallback_is_never_empty_once_data_exists(tmp_path: Path) -> None:
    """A ranker that started before any data refreshes its baseline on demand, not 30 s later."""
    from scalerec_ranker.baselines import Baselines

    store = SqliteStore(tmp_path / "store.db")
    store.ensure_tables(s.tables())
    baselines = Baselines(store, refresh_seconds=3600)
    baselines.refresh()
    assert baselines.trending == []
    asyncio.run(ingest_shop(tmp_path, generate_shop(ShopConfig(users=30, items=20, events_per_user=5, seed=1))))
    baselines._last_attempt = 0.0  # the periodic refresh is an hour away

    async def burst() -> None:
        # Many requests find the list empty at once: one refresh serves them all.
        await asyncio.gather(*(baselines.ensure_trending(wait_s=30) for _ in range(20)))

    generation = baselines.generation
    asyncio.run(burst())
    assert len(baselines.trending) > 0
    assert baselines.generation == generation + 1
    store.close()
