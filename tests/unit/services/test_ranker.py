"""The ranker in process on a real (tiny) trained model: recommendations, hot swap under load, degradation."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scalerec_adapters.bus import OutgoingMessage
from scalerec_adapters.embedded.onnx_scorer import OnnxRuntimeScorer
from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_adapters.scoring import ScorerUnavailable
from scalerec_adapters.store import StoreUnavailable
from scalerec_events.models import Item
from scalerec_events.topics import Topic, topic_name
from scalerec_models import repository as repo
from scalerec_models.bundle import scores_on_vectors
from scalerec_models.data import FIRST_ITEM
from scalerec_ranker.api.routes.recommendations import ItemOut, RecommendationsOut
from scalerec_ranker.config import RankerSettings
from scalerec_ranker.items import ItemRow, ItemTable
from scalerec_ranker.main import create_app
from scalerec_ranker.models import ModelManager
from scalerec_ranker.serving import Candidates
from scalerec_storage import schema as s
from scalerec_synthetic import Shop, ShopConfig, generate_shop

from tests.unit.services.bench import run_benchmark
from tests.unit.services.ingest import ingest_shop, trained_shop

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class World:
    data_dir: Path
    repository: Path
    shop: Shop


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    data_dir = tmp_path_factory.mktemp("ranker")
    repository, shop = trained_shop(data_dir, seed=3)
    # Version 2: the same files under a new number — the swap mechanism is what is under test here.
    for model in (repo.RANKER_MODEL, repo.USER_TOWER_MODEL):
        shutil.copytree(repository / model / "1", repository / model / "2")
    repo.write_champion(repository, repo.RANKER_MODEL, 1)
    return World(data_dir, repository, shop)


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    settings = RankerSettings(
        data_dir=world.data_dir, model_repository=world.repository, scoring_timeout_ms=5000, auth="disabled"
    )
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
    # Serialised from the recommender's dataclasses, yet exactly the documented schema.
    assert r.headers["content-type"] == "application/json"
    assert set(body) == set(RecommendationsOut.model_fields)
    assert all(set(i) == set(ItemOut.model_fields) for i in body["items"])
    assert client.get("/v1/model").json()["candidate_vectors"] is True  # scored in process, on item vectors
    # One onnxruntime call per request: both user sides in one graph, the scores a dot product with vectors.
    scorer = client.app.state.scorer  # type: ignore[attr-defined]
    before = scorer.requests
    assert client.get("/v1/recommendations", params={"user_id": user, "k": 10}).json()["fallback"] is False
    assert scorer.requests == before + 1
    assert RecommendationsOut.model_validate_json(r.content).model_dump(mode="json") == body


def test_an_active_users_refilled_state_is_renewed_before_it_expires(world: World) -> None:
    ttl = 4
    settings = RankerSettings(
        data_dir=world.data_dir, model_repository=world.repository, auth="disabled", user_state_ttl_seconds=ttl
    )
    user = world.shop.users[1]

    def source() -> str:
        r = client.get("/v1/recommendations", params={"user_id": user})
        assert r.status_code == 200, r.text
        return str(r.json()["history_source"])

    with TestClient(create_app(settings)) as client:
        recommender = client.app.state.recommender  # type: ignore[attr-defined]
        assert source() == "store"  # a miss: read from the store, written back (after the answer) for ttl s
        wait_until(lambda: user in recommender._refilled, timeout=10)
        refilled = recommender._refilled[user]
        assert source() == "cache" and recommender.refreshes == 0  # young: no refresh
        time.sleep(max(0.0, refilled + 0.8 * ttl - time.monotonic()))  # past three quarters of the TTL
        assert source() == "cache"  # answered from the cache at once, the refresh runs behind it
        wait_until(lambda: recommender.refreshes == 1, timeout=10)
        # Past the first write's expiry: the hit is the renewed entry, no request waited for the store.
        time.sleep(max(0.0, refilled + 1.2 * ttl - time.monotonic()))
        assert source() == "cache"
        assert recommender.refreshes == 1


def test_what_start_up_built_is_kept_out_of_the_cyclic_collectors_way(world: World) -> None:
    settings = RankerSettings(data_dir=world.data_dir, model_repository=world.repository, auth="disabled")
    gc.unfreeze()
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/recommendations", params={"user_id": world.shop.users[0]}).status_code == 200
        assert gc.get_freeze_count() > 10_000  # the model, the catalogue, the app
    assert gc.get_freeze_count() == 0  # given back at shutdown


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


def test_a_slow_store_costs_a_request_its_budget_not_more_and_opens_its_breaker(world: World) -> None:
    """A store that answers in 3 s (a black-holed Thrift server, a GC pause): each request gives up at
    REQUEST_BUDGET_MS with a flagged fallback, the reads never take more than BACKEND_THREADS threads
    and BACKEND_QUEUE waiting reads (the rest are refused at once), and after BREAKER_FAILURES slow reads the store is
    skipped until a probe finds it well again."""
    settings = RankerSettings(
        data_dir=world.data_dir,
        model_repository=world.repository,
        auth="disabled",
        request_budget_ms=150,
        backend_threads=3,
        backend_queue=2,
        breaker_failures=3,
        breaker_reset_s=1.0,
    )
    with TestClient(create_app(settings)) as c:
        rec = c.app.state.recommender  # type: ignore[union-attr]
        store = c.app.state.store  # type: ignore[union-attr]
        real_scan = store.scan
        release = threading.Event()

        def slow_scan(*args: object, **kwargs: object) -> object:
            release.wait(3.0)
            return real_scan(*args, **kwargs)

        store.scan = slow_scan
        c.app.state.cache.get_many = lambda keys: {}  # type: ignore[union-attr]  # every read goes to the store

        def ask(n: int) -> tuple[float, dict]:
            t = time.monotonic()
            r = c.get("/v1/recommendations", params={"user_id": world.shop.users[n % 50], "k": 5})
            assert r.status_code == 200, r.text
            return time.monotonic() - t, r.json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(24)))
        backend_threads = [t for t in threading.enumerate() if t.name.startswith("ranker-backend")]
        assert len(backend_threads) <= 3
        for took, body in answers:
            assert took < 2.0, "a request waited for the slow store instead of its budget"
            assert body["fallback"] is True and body["history_source"] == "unavailable", body
            assert body["fallback_reason"].startswith("history unavailable: "), body
            assert len(body["items"]) == 5
        reasons = {b["fallback_reason"] for _, b in answers}
        assert any("REQUEST_BUDGET_MS" in x for x in reasons), reasons
        assert any("backend threads busy" in x for x in reasons), reasons
        release.set()  # the stuck reads finish; their slowness has opened the breaker
        wait_until(lambda: rec.store_breaker.state.value != "closed", 5)
        body = ask(1)[1]
        assert body["fallback_reason"] == "history unavailable: store circuit open"

        store.scan = real_scan  # the store is well again: the half-open probe closes the breaker
        time.sleep(1.1)
        wait_until(lambda: ask(2)[1]["fallback"] is False, 5)
        assert rec.store_breaker.state.value == "closed"


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_similar_items_and_unknown_items(client: TestClient, world: World) -> None:
    known = world.shop.events[0].item_id
    r = client.get(f"/v1/items/{known}/similar", params={"k": 5})
    assert r.status_code == 200 and r.json()["items"]
    r = client.get("/v1/items/nope/similar")
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_similar_items_are_seen_together_first_then_near_in_the_embeddings(client: TestClient, world: World) -> None:
    model = client.app.state.models.current  # type: ignore[attr-defined]
    table = model.table
    category = {i.item_id: i.category for i in world.shop.items}
    k, filled = 10, 0
    for item_id in table.ids[FIRST_ITEM : table.size]:
        items = client.get(f"/v1/items/{item_id}/similar", params={"k": k}).json()["items"]
        ids = [i["item_id"] for i in items]
        # Every item-CF neighbour first, in the trainer's order, then the nearest in the embeddings: k in all.
        cf = [i for i, _ in model.model.neighbors.get(item_id, [])][:k]
        assert [i["item_id"] for i in items if i["source"] == "item_cf"] == cf
        assert [i["source"] for i in items] == ["item_cf"] * len(cf) + ["retrieval"] * (k - len(cf))
        assert len(set(ids)) == k and item_id not in ids
        name = table.titles[table.position[item_id]] or item_id
        assert {i["reason"] for i in items} <= {f"Often seen with {name}", f"Similar to {name}"}
        assert all(i["reason"].startswith("Similar") == (i["source"] == "retrieval") for i in items)
        filled += k - len(cf)
    assert filled, "no item needed the embeddings: the fallback is untested"
    # The embeddings' nearest items are alike: in the synthetic shop, of the same category (6 items of each
    # here, so the 5 nearest can all be; 81 % are with this test's small model).
    near = [(i, j) for i in category for j, _ in model.model.similar_items(i, 5)]
    assert sum(category[i] == category[j] for i, j in near) / len(near) >= 0.6


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


# -- the precomputed item state -------------------------------------------------------------------


def _recommended(client: TestClient, user: str, k: int = 10) -> list[dict]:
    r = client.get("/v1/recommendations", params={"user_id": user, "k": k})
    assert r.status_code == 200, r.text
    assert r.json()["fallback"] is False
    return r.json()["items"]


def _wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_catalogue_changes_reach_the_served_items_without_a_restart(client: TestClient, world: World) -> None:
    """A change on the items topic reaches the ranker's item table: a new title is shown, an item made
    unavailable is no longer recommended, and the request path never re-reads the catalogue for it."""
    user = world.shop.users[5]
    top = _recommended(client, user)[0]["item_id"]
    original = next(i for i in world.shop.items if i.item_id == top)
    producer = client.app.state.producer  # type: ignore[attr-defined]

    def publish(item: Item) -> None:
        message = OutgoingMessage(item.model_dump_json().encode(), item.item_id.encode())
        client.portal.call(producer.send_batch, topic_name(Topic.ITEMS), [message])

    publish(original.model_copy(update={"title": "Renamed while serving"}))
    _wait_for(lambda: any(i["title"] == "Renamed while serving" for i in _recommended(client, user)))
    publish(original.model_copy(update={"available": False}))
    _wait_for(lambda: top not in {i["item_id"] for i in _recommended(client, user, 50)})
    table = client.app.state.models.current.table  # type: ignore[attr-defined]
    assert not table.available[table.position[top]]
    publish(original)  # as it was, for the other tests
    _wait_for(lambda: bool(table.available[table.position[top]]))


async def _activated(
    world: World, scorer: OnnxRuntimeScorer | None = None, **options: Any
) -> tuple[OnnxRuntimeScorer, ModelManager]:
    """A model manager on the world's repository and catalogue, version 1 activated."""
    scorer = scorer or OnnxRuntimeScorer(world.repository, inline=True)
    manager = ModelManager(scorer, world.repository, unload_grace_s=0, **options)
    manager.apply_items(ItemRow.of(i) for i in world.shop.items)
    assert await manager.activate(1)
    return scorer, manager


async def test_a_version_built_during_catalogue_changes_misses_none_of_them(world: World) -> None:
    """Activation builds the new version's table in a thread from a snapshot; updates that arrive
    meanwhile go to the old table at once and to the new one before the swap."""

    scorer, manager = await _activated(world)
    old = manager.current
    assert old is not None
    slow_build = manager._build

    def build(version: int, rows: list[ItemRow]) -> object:
        time.sleep(0.5)  # the window in which the update below arrives
        return slow_build(version, rows)

    manager._build = build  # type: ignore[method-assign]
    item = world.shop.items[0]
    activation = asyncio.create_task(manager.activate(2))
    await asyncio.sleep(0.1)
    manager.apply_items([ItemRow.of(item.model_copy(update={"title": "changed mid-build", "available": False}))])
    assert old.table.titles[old.table.position[item.item_id]] == "changed mid-build"
    assert await activation
    new = manager.current
    assert new is not None and new.version == 2 and new is not old
    pos = new.table.position[item.item_id]
    assert new.table.titles[pos] == "changed mid-build" and not new.table.available[pos]
    # Its candidate vector is the one of its new content, in the new table as in the old.
    for table in (old.table, new.table):
        assert table.vectors is not None
        p = table.position[item.item_id]
        assert np.abs(table.vectors[p] - _encoded(scorer, 1, table, [p])[0]).max() <= 1e-6
    await manager.close()
    await scorer.close()


def _encoded(scorer: OnnxRuntimeScorer, version: int, table: ItemTable, positions: Sequence[int]) -> np.ndarray:
    """What the version's candidate encoder makes of these positions' ids and content, run here."""
    pos = np.asarray(positions, dtype=np.int64)
    feeds = {"candidates": table.model_index[pos][None], "candidate_features": table.features[pos][None]}
    out = scorer.run(repo.RANKER_MODEL, version, feeds, ["candidate_vectors"], graph="candidate_encoder.onnx")
    return out["candidate_vectors"][0]


async def test_candidate_vectors_follow_the_catalogue_and_score_as_the_whole_graph(world: World) -> None:
    """Every item's candidate vector is computed when the version is activated and again when the item
    changes or arrives; scoring on those vectors gives the whole graph's scores for the same request."""
    scorer, manager = await _activated(world)
    model = manager.current
    assert model is not None
    table = model.table
    assert table.vectors is not None and table.vectors.dtype == np.float32
    everything = np.arange(FIRST_ITEM, table.size)
    assert np.abs(table.vectors[everything] - _encoded(scorer, 1, table, everything)).max() <= 1e-6

    item = world.shop.items[3]
    pos = table.position[item.item_id]
    before = table.vectors[pos].copy()
    changed = item.model_copy(update={"title": "Completely different words", "category": "somewhere-else"})
    new_item = item.model_copy(update={"item_id": "arrived-while-serving", "title": "A brand new thing"})
    manager.apply_items([ItemRow.of(changed), ItemRow.of(new_item)])
    new_pos = table.position["arrived-while-serving"]
    assert not np.allclose(table.vectors[pos], before)  # its content changed, so did its vector
    assert np.abs(table.vectors[[pos, new_pos]] - _encoded(scorer, 1, table, [pos, new_pos])).max() <= 1e-6

    # One request's scores both ways: ids and content through model.onnx, vectors through the split graph.
    rng = np.random.default_rng(0)
    cands = rng.choice(np.arange(FIRST_ITEM, table.size), 40, replace=False)
    history = np.zeros((1, model.model.history_len), dtype=np.int64)
    history[0, -5:] = table.model_index[cands[:5]]
    context = np.array([[10, 2, 1, 5]], dtype=np.int64)
    whole = await scorer.infer(
        repo.RANKER_MODEL,
        1,
        {
            "history": history,
            "context": context,
            "candidates": table.model_index[cands][None],
            "candidate_features": table.features[cands][None],
        },
        ["scores"],
    )
    split = await scorer.infer(
        repo.RANKER_MODEL,
        1,
        {"history": history, "context": context, "candidate_vectors": table.vectors[cands][None]},
        ["scores"],
        graph="ranker_on_vectors.onnx",
    )
    assert np.abs(whole["scores"] - split["scores"]).max() <= 1e-5
    # And as a request does it: one run of both user sides, the scores a dot product with the vectors.
    user = {"history": history, "context": context}
    states = await scorer.infer(
        repo.RANKER_MODEL, 1, user, ["user_embedding", "ranker_state"], graph="user_states.onnx"
    )
    assert np.abs(scores_on_vectors(states["ranker_state"][0], table.vectors[cands]) - whole["scores"][0]).max() <= 1e-5
    tower = await scorer.infer(repo.USER_TOWER_MODEL, 1, user, ["user_embedding"])
    assert np.abs(states["user_embedding"] - tower["user_embedding"]).max() <= 1e-5
    manager.apply_items([ItemRow.of(item)])  # as it was
    await manager.close()
    # Unloading a version releases every graph of it.
    await scorer.unload(repo.RANKER_MODEL, 1)
    assert (repo.RANKER_MODEL, 1) not in scorer.loaded()
    await scorer.close()


def test_without_the_user_state_a_request_runs_the_ranker_on_vectors(client: TestClient) -> None:
    """Retrieval skipped (no item embeddings, or out of its half of the budget) leaves no state from the one
    run; scoring then runs the ranker on vectors, to the same scores."""
    rec = client.app.state.recommender  # type: ignore[attr-defined]
    model = rec.models.current
    table = model.table
    positions = np.arange(FIRST_ITEM, min(FIRST_ITEM + 50, table.size))
    cands = Candidates(
        positions, np.zeros(len(positions), np.int8), np.full(len(positions), -1), np.zeros(len(positions), np.float32)
    )
    history = np.zeros((1, model.model.history_len), dtype=np.int64)
    history[0, -3:] = table.model_index[positions[:3]]
    context = np.array([[9, 1, 2, 3]], dtype=np.int64)

    async def both() -> tuple[np.ndarray, np.ndarray]:
        deadline = asyncio.get_running_loop().time() + 5
        states = await rec.scorer.infer(
            repo.RANKER_MODEL,
            model.version,
            {"history": history, "context": context},
            ["user_embedding", "ranker_state"],
            graph="user_states.onnx",
        )
        with_state, _ = await rec._score(model, cands, history, context, deadline, states["ranker_state"][0])
        requests = rec.scorer.requests
        without, backend = await rec._score(model, cands, history, context, deadline, None)
        assert rec.scorer.requests == requests + 1 and backend == "onnxruntime"  # it ran a graph
        return with_state, without

    with_state, without = client.portal.call(both)
    assert len(without) == len(positions) and np.abs(with_state - without).max() <= 1e-5


async def test_without_room_or_a_working_encoder_a_version_is_scored_whole(world: World) -> None:
    """Vectors over CANDIDATE_VECTORS_MAX_MB are not kept; an encoder that fails on a catalogue change drops
    them (never a stale vector); either way the version keeps serving, on ids and content."""
    scorer, tight = await _activated(world, candidate_vectors_max_bytes=1024)
    assert tight.current is not None and tight.current.table.vectors is None
    await tight.close()

    settings = RankerSettings(
        data_dir=world.data_dir, model_repository=world.repository, scoring_timeout_ms=5000, auth="disabled"
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        rec = app.state.recommender
        while rec.models.current is None:
            await asyncio.sleep(0.05)
        table = rec.models.current.table
        assert table.vectors is not None

        def broken(indices: np.ndarray, features: np.ndarray) -> np.ndarray:
            raise RuntimeError("encoder lost")

        table._encoder = broken
        rec.models.apply_items([ItemRow.of(world.shop.items[0].model_copy(update={"title": "new words"}))])
        assert table.vectors is None
        answer = await rec.recommend(world.shop.users[5], 10, None, None)
        assert not answer.fallback and answer.scorer == "onnxruntime" and answer.items
    await scorer.close()


async def test_the_warm_up_request_is_shaped_by_the_features(world: World) -> None:
    """The warm-up's context comes from scalerec_features (as a request's does), so a change to the context
    features (a field, a cardinality) changes the warm-up with it instead of sending a stale literal."""
    from scalerec_features import CONTEXT_CARDINALITIES, CONTEXT_FIELDS, DEVICES

    sent: list[tuple[str, Mapping[str, np.ndarray]]] = []
    graphs: list[str] = []

    class Recording(OnnxRuntimeScorer):
        async def infer(
            self,
            model: str,
            version: int,
            inputs: Mapping[str, np.ndarray],
            outputs: Sequence[str],
            *,
            graph: str = "model.onnx",
        ) -> dict[str, np.ndarray]:
            sent.append((model, inputs))
            graphs.append(graph)
            return await super().infer(model, version, inputs, outputs, graph=graph)

    scorer, manager = await _activated(world, Recording(world.repository, inline=True), max_candidates=40)
    ranker = [inputs for name, inputs in sent if name == repo.RANKER_MODEL]
    assert ranker, "no warm-up request reached the scorer"
    context = ranker[0]["context"]
    assert context.shape == (1, len(CONTEXT_FIELDS)) and context.dtype == np.int64
    assert all(0 <= int(v) < card for v, card in zip(context[0], CONTEXT_CARDINALITIES, strict=True)), context
    assert int(context[0][CONTEXT_FIELDS.index("device")]) == DEVICES.index("desktop")
    assert int(context[0][CONTEXT_FIELDS.index("locale")]) > 0  # a named locale, hashed like a request's
    assert ranker[0]["candidates"].shape == (1, 40)
    # The version carries candidate graphs: the ranker on vectors is warmed up at the same full size, and
    # the graph of both user sides once.
    on_vectors = [inputs for (_, inputs), graph in zip(sent, graphs, strict=True) if graph == "ranker_on_vectors.onnx"]
    assert [v["candidate_vectors"].shape[:2] for v in on_vectors] == [(1, 40)]
    assert graphs.count("user_states.onnx") == 1
    await manager.close()
    await scorer.close()


def test_explanations_are_never_shown_below_the_similarity_threshold(client: TestClient, world: World) -> None:
    model = client.app.state.models.current  # type: ignore[attr-defined]
    threshold = client.app.state.settings.explain_min_similarity  # type: ignore[attr-defined]
    table, unit = model.table, model.unit
    shown = 0
    for user in world.shop.users[:40]:
        for item in _recommended(client, user):
            for because in item["because"]:
                a, b = table.model_index[table.position[item["item_id"]]], table.model_index[table.position[because]]
                assert float(unit[a] @ unit[b]) >= threshold - 1e-6, (item, because)
                shown += 1
    assert shown, "no explanation at all: the threshold test proves nothing"
    # And the other way round: with a threshold no pair reaches, nothing is explained.
    picked = np.arange(FIRST_ITEM, min(FIRST_ITEM + 10, table.size))
    history = np.arange(FIRST_ITEM + 10, min(FIRST_ITEM + 40, table.size))
    assert (model.explain(picked, history, 1.01) == -1).all()


def test_an_explanation_names_an_item_like_the_one_recommended(client: TestClient, world: World) -> None:
    """A "because you viewed X" only where X is alike: in the synthetic shop, an item of the same category
    (users like a few categories each, nothing relates two of them). With the embeddings' plain cosine and
    the old threshold, 40 % of the demo's explanations named an item of another category."""
    category = {i.item_id: i.category for i in world.shop.items}
    explained = same = answered = 0
    for user in world.shop.users[::2]:
        for item in _recommended(client, user):
            answered += 1
            for because in item["because"]:
                explained += 1
                same += category[because] == category[item["item_id"]]
    # This test's small model: 51 % of the items explained, 72 % of those by an item of the same category
    # (93 % and 41 % with the plain cosine and the old threshold of 0.6); the demo's models: 99 %.
    assert explained >= answered // 10, (explained, answered)
    assert same / explained >= 0.55, (same, explained)


def test_the_category_cap_bounds_each_category_and_one_turns_it_off(world: World) -> None:
    """CATEGORY_CAP: at most ceil(k x cap) items of a category (at least 2); at 1 the answer is the best-scored
    candidates, whose scores can only add up to more than any capped answer's for the same user."""
    category = {i.item_id: i.category for i in world.shop.items}
    answers: dict[float, dict[str, list[dict[str, Any]]]] = {}
    for cap in (0.2, 0.5, 1.0):
        settings = RankerSettings(
            data_dir=world.data_dir,
            model_repository=world.repository,
            scoring_timeout_ms=5000,
            auth="disabled",
            fresh_item_slots=0,
            category_cap=cap,
        )
        with TestClient(create_app(settings)) as c:
            answers[cap] = {u: _recommended(c, u) for u in world.shop.users[:30]}
    for cap, most in ((0.2, 2), (0.5, 5)):
        for items in answers[cap].values():
            per = Counter(category[i["item_id"]] for i in items)
            assert len(items) == 10 and max(per.values()) <= most, (cap, per)
    for user, items in answers[1.0].items():
        scores = [i["score"] for i in items]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) >= sum(i["score"] for i in answers[0.2][user]) - 1e-3
    assert any(max(Counter(category[i["item_id"]] for i in items).values()) > 2 for items in answers[1.0].values()), (
        "the uncapped answers never have 3 of a category: the cap is not shown to matter"
    )


def test_the_throughput_benchmark_runs_and_reports(world: World, tmp_path: Path) -> None:
    """A few-second smoke run: it starts the ranker and the floor, drives both with wrk, prints the table."""
    out = tmp_path / "bench.json"
    stdout = run_benchmark(
        "ranker_throughput.py",
        "--data-dir",
        str(world.data_dir),
        "--duration",
        "1",
        "--connections",
        "1,4",
        "--workers",
        "1",
        "--users",
        str(len(world.shop.users)),
        "--warmup",
        "1",
        "--profile",
        "--json",
        str(out),
    )
    assert "floor req/s" in stdout and "model scoring" in stdout
    report = json.loads(out.read_text())
    assert [row["connections"] for row in report["rows"]] == [1, 4]
    assert all(row["rps"] > 0 and row["floor_rps"] > 0 and row["errors"] == 0 for row in report["rows"])
    assert all(row["candidates_per_request"] > 0 for row in report["rows"])
    assert all(row["busiest_worker_cpu_share"] is None for row in report["rows"])  # one worker: no balance to tell


def test_the_request_cpu_benchmark_runs_and_reports(world: World) -> None:
    """A few-second smoke run: the floor, the ranker app and the recommender alone, each with its row."""
    stdout = run_benchmark(
        "ranker_request_cpu.py",
        "--data-dir",
        str(world.data_dir),
        "--rounds",
        "1",
        "--requests",
        "20",
        "--users",
        str(len(world.shop.users)),
    )
    rows = {line[:34].strip(): line[34:].split() for line in stdout.splitlines() if line[:34].strip()}
    for arm in ("bare FastAPI, same body (floor)", "ranker app", "recommender alone"):
        us, ratio = map(float, rows[arm])
        assert us > 0 and 0 < ratio <= 1.5, (arm, stdout)
    assert "of the recommender's CPU" in stdout


def test_the_explanation_quality_benchmark_runs_and_reports(world: World) -> None:
    """A few-second smoke run: a row per served version and the similar items by source."""
    stdout = run_benchmark(
        "explanation_quality.py",
        "--data-dir",
        str(world.data_dir),
        "--users",
        str(len(world.shop.users)),
        "--every",
        "10",
    )
    tables = [line.split("|")[1:-1] for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    versions = [row for row in tables if row[0].strip()[:1] == "v" and row[0].strip()[1:].isdigit()]
    assert [row[0].strip() for row in versions] == ["v1"], stdout
    assert int(versions[0][1].replace(",", "")) == 10 * len(range(0, len(world.shop.users), 10)), stdout
    sources = {row[0].strip() for row in tables if row[0].strip() in ("item_cf", "retrieval")}
    assert sources == {"item_cf", "retrieval"}, stdout


def test_the_rerank_quality_benchmark_runs_and_reports(world: World) -> None:
    """A few-second smoke run: a row per cap, the uncapped one as the floor (ratio 1)."""
    stdout = run_benchmark(
        "rerank_quality.py", "--data-dir", str(world.data_dir), "--version", "1", "--caps", "1,0.5,0.2"
    )
    rows = [line.split("|")[1:-1] for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    caps = [row for row in rows if row[0].strip() != "CATEGORY_CAP"]
    assert [(row[0].strip(), row[1].strip()) for row in caps] == [("1", "10"), ("0.5", "5"), ("0.2", "2")], stdout
    assert float(caps[0][4]) == 1.0 and all(0 <= float(row[3]) <= 1 for row in caps), stdout
    assert "holdout of" in stdout


def test_the_gc_pause_benchmark_runs_and_reports(world: World) -> None:
    """A few-second smoke run: both arms, each with its collections per generation."""
    stdout = run_benchmark(
        "ranker_gc_pauses.py",
        "--data-dir",
        str(world.data_dir),
        "--requests",
        "300",
        "--users",
        str(len(world.shop.users)),
    )
    rows = [line.split("|")[1:-1] for line in stdout.splitlines() if line.startswith("| ") and "arm" not in line]
    assert {row[0].strip() for row in rows} == {"floor: no freeze", "ranker: frozen at start-up"}, stdout
    assert all(int(row[2]) > 0 and float(row[4]) > 0 for row in rows), stdout
    assert "frozen / not frozen" in stdout or "no full collection" in stdout


@pytest.mark.parametrize("bad", ["i1|i2", "i1\x00", "i\u202e1", "i\u200b1", "i" * 129])
def test_hostile_item_ids_in_exclude_and_the_path_are_422_naming_the_field(
    client: TestClient, world: World, bad: str
) -> None:
    user = world.shop.events[0].user_id
    r = client.get("/v1/recommendations", params={"user_id": user, "exclude": ["i1", bad]})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "exclude[1]"
    similar = client.get(f"/v1/items/{quote(bad, safe='')}/similar")
    assert similar.status_code == 422, similar.text
    assert similar.json()["errors"][0]["field"] == "item_id"


def test_exclude_is_capped(client: TestClient, world: World) -> None:
    from scalerec_ranker.api.routes.recommendations import MAX_EXCLUDE

    user = world.shop.events[0].user_id
    ids = [f"i{n}" for n in range(MAX_EXCLUDE + 1)]
    r = client.get("/v1/recommendations", params={"user_id": user, "exclude": ids})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "exclude"
    assert client.get("/v1/recommendations", params={"user_id": user, "exclude": ids[:-1]}).status_code == 200


def test_a_post_takes_the_same_fields_as_json_with_an_exclusion_list_no_url_can_carry(
    client: TestClient, world: World
) -> None:
    """500 ids of 128 characters are ~65 KB: past the 65,535 bytes of a URL (414 for GET), fine in a body."""
    from scalerec_ranker.api.routes.recommendations import MAX_EXCLUDE

    user = world.shop.events[0].user_id
    got = client.get("/v1/recommendations", params={"user_id": user, "k": 10, "device": "mobile"}).json()
    posted = client.post("/v1/recommendations", json={"user_id": user, "k": 10, "device": "mobile"})
    assert posted.status_code == 200 and posted.headers["content-type"] == "application/json", posted.text
    same = ("item_id", "source", "reason", "because")
    assert [[i[f] for f in same] for i in posted.json()["items"]] == [[i[f] for f in same] for i in got["items"]]
    shown = [i["item_id"] for i in got["items"]][:5]
    long_ids = [f"{n:03d}".ljust(128, "x") for n in range(MAX_EXCLUDE - len(shown))]
    exclude = shown + long_ids
    assert len("&".join(f"exclude={i}" for i in exclude)) > 65_535
    r = client.post("/v1/recommendations", json={"user_id": user, "k": 10, "exclude": exclude})
    assert r.status_code == 200, r.text
    items = [i["item_id"] for i in r.json()["items"]]
    assert len(items) == 10 and not set(items) & set(shown)
    assert r.json()["fallback"] is False


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"user_id": "u1", "exlude": ["i1"]}, 422, "exlude"),  # a misspelt field is not quietly ignored
        ({"user_id": "u1", "exclude": ["i1", "i1|i2"]}, 422, "exclude[1]"),
        ({"user_id": "u1", "exclude": [f"i{n}" for n in range(501)]}, 422, "exclude"),
        ({"user_id": "u1", "k": 10_000}, 422, "k"),
        ({"user_id": "u1", "k": 0}, 422, "k"),
        ({"user_id": "u1", "k": True}, 422, "k"),  # not 1
        ({"user_id": "u1", "k": "5"}, 422, "k"),
        ({"k": 3}, 422, "user_id"),
        ([{"user_id": "u1"}], 422, "body"),
        (None, 415, "body"),  # no body at all: it must be JSON
    ],
)
def test_a_post_with_a_bad_body_is_a_4xx_naming_the_field(
    client: TestClient, body: object, status: int, field: str
) -> None:
    r = client.post("/v1/recommendations", json=body)
    assert r.status_code == status, r.text
    assert field in {e["field"] for e in r.json()["errors"]}, r.text


def test_a_post_that_is_not_json_is_a_400_or_415_naming_the_body(client: TestClient) -> None:
    malformed = client.post(
        "/v1/recommendations", content=b'{"user_id": "u1",', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400 and malformed.json()["errors"] == [
        {
            "field": "body",
            "message": "malformed JSON at character 17: Expecting property name enclosed in double quotes",
        }
    ], malformed.text
    form = client.post("/v1/recommendations", content=b"user_id=u1", headers={"content-type": "text/plain"})
    assert form.status_code == 415 and "text/plain" in form.json()["detail"], form.text


def test_a_post_with_thousands_of_unknown_fields_gets_a_short_answer_and_a_huge_body_a_413(
    client: TestClient,
) -> None:
    """400,000 unknown keys in 3.9 MB were 400,000 errors: a 27 MB answer after 3 s of the event loop, while
    other requests waited past their budget. The ranker's body limit is now 256 KiB and an answer lists at
    most 20 errors."""
    crowded = {"user_id": "u1", **{f"f{n}": 0 for n in range(20_000)}}
    r = client.post("/v1/recommendations", json=crowded)
    assert r.status_code == 422 and len(r.content) < 4000, (r.status_code, len(r.content))
    errors = r.json()["errors"]
    assert len(errors) == 21 and errors[-1] == {"field": "body", "message": "and 19980 more errors (not listed)"}
    assert r.json()["detail"].endswith(" and more")
    huge = {"user_id": "u1", **{f"f{n}": 0 for n in range(40_000)}}
    assert client.post("/v1/recommendations", json=huge).status_code == 413


def test_a_tampered_model_version_is_refused_and_the_previous_one_keeps_serving(world: World, tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    shutil.copytree(world.repository, repository)
    card = repo.read_card(repository, repo.RANKER_MODEL, 1)
    assert card["sha256"][repo.MODEL_FILE] and set(card["sha256"]) == set(card["files"])
    for model in (repo.RANKER_MODEL, repo.USER_TOWER_MODEL):
        for v in (3, 4, 5):
            shutil.copytree(repository / model / "1", repository / model / str(v))
    onnx = repository / repo.RANKER_MODEL / "3" / repo.MODEL_FILE
    onnx.write_bytes(onnx.read_bytes()[:-1] + bytes([onnx.read_bytes()[-1] ^ 1]))  # one bit flipped
    (repository / repo.USER_TOWER_MODEL / "4" / "extra.py").write_text("import os\n")  # a file the trainer never wrote
    settings = RankerSettings(
        data_dir=world.data_dir, model_repository=repository, scoring_timeout_ms=5000, auth="disabled"
    )
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/model").json()["model_version"] == 1
        manager = c.app.state.models  # type: ignore[attr-defined]
        assert not c.portal.call(manager.activate, 3)
        body = c.get("/v1/model").json()
        assert body["model_version"] == 1
        assert "IntegrityError" in body["last_error"] and "model.onnx does not match its sha256" in body["last_error"]
        assert c.get("/v1/recommendations", params={"user_id": world.shop.users[0], "k": 3}).status_code == 200
        assert not c.portal.call(manager.activate, 4)
        assert "extra.py is not in the card" in c.get("/v1/model").json()["last_error"]
        assert c.portal.call(manager.activate, 5)  # an intact copy is served
        body = c.get("/v1/model").json()
        assert body["model_version"] == 5 and body["last_error"] is None


async def test_a_promotion_waits_for_its_version_to_reach_a_mirrored_repository(world: World, tmp_path: Path) -> None:
    """With the repository mirrored from object storage, the announcement can come before the copy: the
    ranker keeps serving the old version and asks again (RetryLater, not a dead letter), then swaps once
    the version is all there. One announced long ago and never copied is tried (and refused) as before."""
    from datetime import UTC, datetime, timedelta

    from scalerec_adapters.bus import Message
    from scalerec_adapters.worker import RetryLater
    from scalerec_events.models import ModelAnnouncement
    from scalerec_ranker.consumers.promotions import PromotionsConsumer

    mirror = tmp_path / "mirror"
    for model in (repo.RANKER_MODEL, repo.USER_TOWER_MODEL):
        shutil.copytree(world.repository / model, mirror / model, ignore=lambda d, names: ["2"] if "2" in names else [])
    scorer, manager = await _activated(World(world.data_dir, mirror, world.shop))
    consumer = PromotionsConsumer(manager)

    def announced(version: int, at: datetime) -> Message:
        ann = ModelAnnouncement(model=repo.RANKER_MODEL, version=version, repository=str(mirror), created_at=at)
        return Message("models.promoted", 0, version, None, ann.model_dump_json().encode())

    now = datetime.now(UTC)
    with pytest.raises(RetryLater, match="version 2 is not in"):
        await consumer.handle([announced(2, now)])
    assert manager.current is not None and manager.current.version == 1
    (mirror / repo.RANKER_MODEL / "2").mkdir()
    shutil.copy(world.repository / repo.RANKER_MODEL / "2" / repo.CARD_FILE, mirror / repo.RANKER_MODEL / "2")
    with pytest.raises(RetryLater):  # the card has come, the model not yet
        await consumer.handle([announced(2, now)])
    shutil.copytree(world.repository / repo.RANKER_MODEL / "2", mirror / repo.RANKER_MODEL / "2", dirs_exist_ok=True)
    with pytest.raises(RetryLater):  # the ranker's folder is complete, the user tower's not copied yet
        await consumer.handle([announced(2, now)])
    shutil.copytree(world.repository / repo.USER_TOWER_MODEL / "2", mirror / repo.USER_TOWER_MODEL / "2")
    result = await consumer.handle([announced(2, now)])
    assert not result.poison and manager.current.version == 2

    late = now - timedelta(seconds=repo.WAIT_FOR_ARRIVAL_S + 1)
    result = await consumer.handle([announced(3, late)])
    assert not result.poison and manager.current.version == 2 and "version 3" in (manager.last_error or "")
    await scorer.close()
