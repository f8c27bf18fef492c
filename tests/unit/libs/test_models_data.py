"""Loaders, vocabulary, leave-one-out split, baselines, serving bundle encoding and the ANN index (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scalerec_features import ITEM_FEATURE_LEN, item_feature_vector
from scalerec_models.ann import AnnIndex, top_rows
from scalerec_models.baselines import ItemKNN, Popularity, UserKNN
from scalerec_models.bundle import ModelBundle
from scalerec_models.config import model_config
from scalerec_models.data import FIRST_ITEM, UNKNOWN, Interactions, ItemVocab, leave_one_out
from scalerec_models.datasets import load_dataset

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "movielens_tiny"


def test_models_package_does_not_import_torch() -> None:
    # A fresh interpreter: the ranker and evaluator import these modules without torch installed.
    code = (
        "import sys, scalerec_models, scalerec_models.ann, scalerec_models.baselines, scalerec_models.benchmark, "
        "scalerec_models.bundle, scalerec_models.data, scalerec_models.datasets, scalerec_metrics; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("fmt", "target"),
    [
        ("movielens-100k", FIXTURES),
        ("movielens-1m", FIXTURES),
        ("movielens-csv", FIXTURES / "ratings.csv"),
        ("csv", FIXTURES / "interactions.csv"),
    ],
)
def test_every_format_loads_the_same_events(fmt: str, target: Path) -> None:
    ds = load_dataset(target, fmt)
    data = ds.interactions
    assert len(data) == 96
    assert len(set(data.user_id)) == 12
    assert len(set(data.item_id)) <= 30
    first = 0
    assert data.ts_ms[first] == 978301000 * 1000  # seconds -> ms; the generic csv had ms already
    assert data.context.shape == (96, 4)
    if fmt != "csv":
        assert data.type[first] == "rating" and data.value[first] == 4.0
        # Content comes from the movie file: Movie 30 is a Comedy.
        assert ds.item_features["30"][:2] == item_feature_vector("Comedy", None)[:2]
        assert ds.item_features["30"][0] != 0


def test_loader_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"ratings\.dat"):
        load_dataset(tmp_path, "movielens-1m")
    bad = tmp_path / "x.csv"
    bad.write_text("who,what\n1,2\n")
    with pytest.raises(ValueError, match="user,item,timestamp"):
        load_dataset(bad, "csv")
    with pytest.raises(ValueError, match="unknown format"):
        load_dataset(bad, "parquet")


def test_leave_one_out_respects_time_and_file_order() -> None:
    ds = load_dataset(FIXTURES, "movielens-100k")
    split = leave_one_out(ds.interactions, ds.item_features)
    assert len(split.eval_users) == 12
    rows = [line.split("\t") for line in (FIXTURES / "u.data").read_text().splitlines()]
    user1 = [r[1] for r in rows if r[0] == "1"]
    assert split.vocab.item_id(int(split.test_target[0])) == user1[-1]
    assert split.vocab.item_id(int(split.val_target[0])) == user1[-2]
    assert [split.vocab.item_id(int(i)) for i in split.train.items[0]] == user1[:-2]
    # The test history includes the validation item; exclusions never contain the target.
    assert split.history(0, "test")[-1] == split.val_target[0]
    assert split.test_target[0] not in split.exclusions("test")[0]


def test_vocab_exact_and_hashed(tmp_path: Path) -> None:
    vocab = ItemVocab(["a", "b", "a"])
    assert vocab.size == 4 and vocab.index("a") == FIRST_ITEM and vocab.index("zzz") == UNKNOWN
    vocab.save(tmp_path / "vocab.json")
    assert ItemVocab.load(tmp_path / "vocab.json").index("b") == 3
    hashed = ItemVocab(buckets=1000)
    idx = hashed.indices(["a", "b", "c"])
    assert hashed.size == 1002 and ((idx >= FIRST_ITEM) & (idx < 1002)).all()
    assert ItemVocab.from_json(json.loads(json.dumps(hashed.to_json()))).index("a") == idx[0]


def test_baselines_follow_taste() -> None:
    # Items 2..5 are bought together, items 6..9 together; a user with 2 and 3 should get 4/5 first.
    hist = [
        np.array([2, 3, 4, 5]),
        np.array([2, 3, 4]),
        np.array([6, 7, 8, 9]),
        np.array([6, 7, 9]),
        np.array([2, 4, 5]),
    ]
    query = [np.array([2, 3])]
    for model in (ItemKNN(k=3), UserKNN(k=2)):
        # Fitted in place: the evaluator keeps its own reference and ignores fit's return value.
        assert model.fit(hist, 10) is model
        scores = model.score(query)[0]
        top = set(np.argsort(-scores)[:4].tolist()) - {2, 3}
        assert top == {4, 5}, type(model).__name__
    pop = Popularity().fit(hist, 10).score(query)[0]
    assert np.argmax(pop) in (2, 4) and np.isneginf(pop[:FIRST_ITEM]).all()


def test_ann_index_finds_the_nearest_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    ann = AnnIndex(8).build(emb)
    _scores, items = ann.search(emb[[10, 20]], 3)
    assert items[:, 0].tolist() == [
        int(np.argmax(emb[FIRST_ITEM:] @ emb[10]) + FIRST_ITEM),
        int(np.argmax(emb[FIRST_ITEM:] @ emb[20]) + FIRST_ITEM),
    ]
    assert (items >= FIRST_ITEM).all()
    ann.save(tmp_path / "ann")
    again = AnnIndex.load(tmp_path / "ann")
    assert np.array_equal(again.search(emb[[10, 20]], 3)[1], items)
    hnsw = AnnIndex(8, kind="hnsw").build(emb)
    assert hnsw.search(emb[[10]], 1)[1][0, 0] == items[0, 0]


@pytest.mark.parametrize("k", [1, 7, 48, 60])
def test_flat_ann_in_numpy_answers_as_faiss_does(k: int) -> None:
    import faiss

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    queries = rng.normal(size=(3, 8)).astype(np.float32)
    ann = AnnIndex(8, kind="flat").build(emb)
    scores, items = ann.search(queries, k)
    reference = faiss.IndexFlatIP(8)
    reference.add(emb[FIRST_ITEM:])
    ref_scores, ref_rows = reference.search(queries, k)
    assert scores.shape == items.shape == (3, k) and scores.dtype == np.float32
    assert np.array_equal(items, np.where(ref_rows >= 0, ref_rows + FIRST_ITEM, -1))
    found = ref_rows >= 0  # fewer items than k: the rest is -1 / -inf, as faiss pads
    assert np.array_equal(np.isfinite(scores), found)
    assert np.allclose(scores[found], ref_scores[found], atol=1e-5)
    assert (np.diff(scores[:, : min(k, 48)], axis=1) <= 0).all()  # best first
    for i, query in enumerate(queries):  # one query (the request path's own branch): the same answer
        one_scores, one_items = ann.search(query, k)  # (BLAS rounds one row and three rows differently)
        assert np.array_equal(one_items[0], items[i]) and np.allclose(one_scores[0], scores[i], atol=1e-6)


def test_flat_ann_breaks_ties_by_row_for_one_query_and_for_many() -> None:
    emb = np.zeros((12, 4), dtype=np.float32)
    emb[FIRST_ITEM:, 0] = [3, 1, 2, 2, 2, 1, 0, 3, 2, 1]  # rows 2..11; several equal scores
    ann = AnnIndex(4, kind="flat").build(emb)
    q = np.array([[1, 0, 0, 0]], dtype=np.float32)
    expected = [2, 9, 4, 5, 6, 10]  # by score, then by row
    assert ann.search(q, 6)[1][0].tolist() == expected
    assert ann.search(np.repeat(q, 2, axis=0), 6)[1].tolist() == [expected, expected]


def test_top_rows_puts_the_best_first_and_equal_scores_in_index_order() -> None:
    """What the flat ANN search and a version's similar items (ModelVersion.similar_items) both rank with."""
    scores = np.array([3, 1, 2, 2, 2, 1, 0, 3, 2, 1], dtype=np.float32)
    for k, expected in ((1, [0]), (4, [0, 7, 2, 3]), (6, [0, 7, 2, 3, 4, 8]), (9, [0, 7, 2, 3, 4, 8, 1, 5, 9])):
        assert top_rows(scores, k).tolist() == expected


def test_bundle_builds_the_contract_arrays(tmp_path: Path) -> None:
    cfg = model_config("demo", history_len=4)
    cfg.save(tmp_path / "config.json")
    ItemVocab(["a", "b", "c"]).save(tmp_path / "vocab.json")
    table = np.zeros((5, ITEM_FEATURE_LEN), np.int64)
    table[2] = 7
    np.save(tmp_path / "item_features.npy", table)
    bundle = ModelBundle(tmp_path)
    new_feats = item_feature_vector("shoes", 10.0, "red shoe")
    inputs = bundle.ranker_inputs(
        histories=[["a", "b", "c", "a", "b"], []],
        contexts=[[1, 2, 3, 4], [0, 0, 0, 0]],
        candidates=[["c", "new-item"], ["a"]],
        candidate_features=[[table[4].tolist(), new_feats], None],
    )
    assert inputs["history"].tolist() == [[3, 4, 2, 3], [0, 0, 0, 0]]
    assert inputs["history"].dtype == np.int64 and inputs["context"].shape == (2, 4)
    assert inputs["candidates"].tolist() == [[4, UNKNOWN], [2, 0]]
    assert inputs["candidate_features"].shape == (2, 2, ITEM_FEATURE_LEN)
    assert inputs["candidate_features"][0, 1].tolist() == new_feats  # cold item keeps its content
    assert inputs["candidate_features"][1, 0].tolist() == [7] * ITEM_FEATURE_LEN  # looked up when not given
    with pytest.raises(ValueError, match="4 values"):
        bundle.encode_context([[1, 2]])


def test_interactions_from_records() -> None:
    data = Interactions.from_records(
        [
            {"user_id": "u", "item_id": "i", "ts_ms": 1_700_000_000_000, "type": "purchase"},
            {
                "user_id": "u",
                "item_id": "j",
                "ts_ms": 1_700_000_100_000,
                "type": "rating",
                "value": 5,
                "context": [1, 2, 3, 4],
            },
        ]
    )
    assert data.conversion().tolist() == [True, True]
    assert data.context[1].tolist() == [1, 2, 3, 4]


def test_the_conversion_head_learns_the_one_definition_of_a_conversion() -> None:
    from scalerec_events.labels import is_conversion
    from scalerec_events.models import EventType

    rows = [(t.value, v) for t in EventType for v in (None, 1.0, 3.5, 4.0, 5.0)]
    data = Interactions.from_records(
        {"user_id": "u", "item_id": "i", "ts_ms": 1_700_000_000_000 + n, "type": t, "value": v}
        for n, (t, v) in enumerate(rows)
    )
    assert data.conversion().tolist() == [is_conversion(t, v) for t, v in rows]
    assert is_conversion(EventType.PURCHASE, None) and is_conversion("rating", 4.0)
    assert not is_conversion("rating", 3.5) and not is_conversion("click", 5.0)


def test_one_device_list_for_the_wire_the_feature_and_the_ranker() -> None:
    from typing import get_args

    from scalerec_events import models as events
    from scalerec_features import DEVICES, Device, context_features

    # The events' Literal is restated until scalerec_events imports scalerec_features.Device: it must not drift.
    assert get_args(events.Device) == get_args(Device)
    assert ("unknown", *get_args(Device)) == DEVICES
    # The device feature is an index the models were trained on: it never moves.
    assert [context_features(0, d)[2] for d in ("desktop", "mobile", "tablet", "tv", "other", None)] == [
        1,
        2,
        3,
        4,
        5,
        0,
    ]
