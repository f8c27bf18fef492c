"""The neural models end to end: train (tiny), export ONNX, serve through ModelBundle without torch.

The synthetic world: 3 categories of 12 items; each user consumes items of one
category.  A model that learned anything ranks a *new* item (no interactions,
index "unknown") of the user's category above known items of other categories.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scalerec_features import ITEM_FEATURE_LEN, item_feature_vector  # noqa: E402
from scalerec_features.serving import (  # noqa: E402
    CANDIDATE_ENCODER,
    RANKER,
    RANKER_ON_VECTORS,
    USER_STATES,
    USER_TOWER,
    ServingContract,
    check_contract,
    contract_problems,
)
from scalerec_models.ann import AnnIndex  # noqa: E402
from scalerec_models.bundle import ModelBundle  # noqa: E402
from scalerec_models.config import model_config  # noqa: E402
from scalerec_models.data import UNKNOWN, Interactions  # noqa: E402
from scalerec_models.networks import SeqRanker, TwoTower  # noqa: E402
from scalerec_models.onnx_export import (  # noqa: E402
    candidate_graphs_parity,
    export_candidate_graphs,
    export_ranker,
    export_user_tower,
    ranker_parity,
    user_tower_parity,
)
from scalerec_models.pipeline import TrainedModels, check_parity, export, train_models  # noqa: E402
from scalerec_models.repository import tensor_specs_from_onnx  # noqa: E402
from scalerec_models.training import EpochReport  # noqa: E402

CATEGORIES = ("jazz", "metal", "opera")
PER_CATEGORY = 12


def _catalogue() -> dict[str, list[int]]:
    return {
        f"{cat}-{i}": item_feature_vector(cat, 10.0 + c, title=f"{cat} record {i}")
        for c, cat in enumerate(CATEGORIES)
        for i in range(PER_CATEGORY)
    }


def _world(seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(90):
        cat = CATEGORIES[u % 3]
        items = rng.choice(PER_CATEGORY, size=8, replace=False)
        for k, i in enumerate(items):
            rows.append(
                {
                    "user_id": f"u{u}",
                    "item_id": f"{cat}-{i}",
                    "ts_ms": 1_700_000_000_000 + (u * 100 + k) * 60_000,
                    "type": "purchase" if k % 3 == 0 else "click",
                    "context": [10, 2, 1, 5],
                }
            )
    return Interactions.from_records(rows)


@pytest.fixture(scope="module")
def trained() -> TrainedModels:
    torch.set_num_threads(1)
    cfg = model_config(
        "demo",
        dim=16,
        max_len=10,
        history_len=10,
        epochs=25,
        patience=25,
        tower_epochs=15,
        tower_dim=16,
        batch_size=32,
        tower_batch_size=32,
        lr=1e-2,
        id_dropout=0.2,
        dropout=0.1,
    )
    return train_models(_world(), _catalogue(), cfg, progress=False, on_epoch=EPOCHS.append)


#: What the training loops reported through ``on_epoch`` while the ``trained`` fixture ran.
EPOCHS: list[EpochReport] = []


def test_training_reports_every_epoch_through_the_callback(trained: TrainedModels) -> None:
    for model, max_epochs in (("ranker", 25), ("two-tower", 15)):
        reports = [r for r in EPOCHS if r.model == model]
        assert [r.epoch for r in reports] == list(range(1, len(reports) + 1))
        assert all(r.epochs == max_epochs and math.isfinite(r.loss) and r.loss > 0 for r in reports)
        assert all(r.val_ndcg is not None and 0 <= r.val_ndcg <= 1 for r in reports)
    assert [r.model for r in EPOCHS] == sorted((r.model for r in EPOCHS), key=["ranker", "two-tower"].index)


@pytest.fixture(scope="module")
def version(trained: TrainedModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("version")
    export(trained, out)  # raises if ONNX and torch disagree by more than 1e-5
    return out


def test_export_writes_the_serving_contract(version: Path, trained: TrainedModels) -> None:
    for name in ("ranker.onnx", "user_tower.onnx", "item_embeddings.npy", "vocab.json", "config.json"):
        assert (version / name).exists(), name
    assert not (version / "ranker.onnx.data").exists()  # small models are one file
    import onnx

    ranker = onnx.load(str(version / "ranker.onnx"))
    inputs = {i.name: i.type.tensor_type for i in ranker.graph.input}
    assert list(inputs) == ["history", "context", "candidates", "candidate_features"]
    assert all(t.elem_type == onnx.TensorProto.INT64 for t in inputs.values())
    assert [o.name for o in ranker.graph.output] == ["scores", "p_click", "p_conversion"]
    assert inputs["history"].shape.dim[1].dim_value == trained.config.history_len
    assert inputs["candidate_features"].shape.dim[2].dim_value == ITEM_FEATURE_LEN
    emb = np.load(version / "item_embeddings.npy")
    assert emb.shape == (trained.vocab.size, trained.config.tower_dim) and emb.dtype == np.float32


@pytest.mark.parametrize(("file", "contract"), [("ranker.onnx", RANKER), ("user_tower.onnx", USER_TOWER)])
def test_exported_onnx_is_the_serving_contract(version: Path, file: str, contract: ServingContract) -> None:
    """What the trainer exports is exactly what scalerec_features.serving promises the ranker and Triton."""
    inputs, outputs = tensor_specs_from_onnx(version / file)
    for have, want in ((inputs, contract.inputs), (outputs, contract.outputs)):
        assert [(t.name, t.dtype, len(t.dims)) for t in have] == [(t.name, t.dtype, len(t.dims)) for t in want]
        for got, spec in zip(have, want, strict=True):  # fixed sizes (context, item features) are exact
            assert all(w in (-1, g) for g, w in zip(got.dims, spec.dims, strict=True)), (got, spec)
    assert check_contract(contract.model, inputs, outputs) == []


def test_onnx_matches_torch_for_both_models(version: Path, trained: TrainedModels) -> None:
    diffs = check_parity(trained, version, batch=3, n=7)
    assert diffs["ranker"] <= 1e-5 and diffs["user_tower"] <= 1e-5, diffs
    assert diffs["ranker_on_vectors"] <= 1e-5, diffs  # the ranker split at its candidates' vectors
    assert diffs["user_states"] <= 1e-5, diffs  # both user sides in one graph, scored by scores_on_vectors


@pytest.mark.parametrize(
    ("file", "contract"),
    [
        ("candidate_encoder.onnx", CANDIDATE_ENCODER),
        ("ranker_on_vectors.onnx", RANKER_ON_VECTORS),
        ("user_states.onnx", USER_STATES),
    ],
)
def test_the_candidate_graphs_are_their_contracts(
    version: Path, trained: TrainedModels, file: str, contract: ServingContract
) -> None:
    inputs, outputs = tensor_specs_from_onnx(version / file)
    assert contract_problems(contract, inputs, outputs) == []
    tensors = {t.name: t for t in (*inputs, *outputs)}
    if "candidate_vectors" in tensors:
        assert tensors["candidate_vectors"].dims == (-1, trained.config.dim)  # [B, N, D]: D fixed by the model
    else:
        assert tensors["ranker_state"].dims == (trained.config.dim,)
        assert tensors["user_embedding"].dims == (trained.config.tower_dim,)


def test_the_candidate_graphs_keep_padding_new_items_and_deeper_models_exact(tmp_path: Path) -> None:
    """Untrained 3-layer model: padded candidates (id 0), unknown ids with content, out-of-range context."""
    torch.manual_seed(5)
    cfg = model_config("small", dim=16, layers=3, heads=4, history_len=12, max_len=20)
    n = 40
    features = torch.randint(0, 16, (n, ITEM_FEATURE_LEN))
    ranker, tower = SeqRanker(cfg, n, features).eval(), TwoTower(cfg, n, features).eval()
    assert set(export_candidate_graphs(ranker, tower, tmp_path)) == {
        "candidate_encoder",
        "ranker_on_vectors",
        "user_states",
    }
    rng = np.random.default_rng(6)
    candidates = rng.integers(1, n, (3, 9))
    candidates[0, 5:] = 0  # padding
    candidates[1, :2] = UNKNOWN  # new items: content only
    history = rng.integers(0, n, (3, cfg.history_len))
    history[2] = 0
    inputs = {
        "history": history,
        "context": np.array([[0, 0, 0, 0], [23, 6, 5, 63], [99, -1, 9, 999]]),
        "candidates": candidates,
        "candidate_features": rng.integers(0, 16, (3, 9, ITEM_FEATURE_LEN)),
    }
    diffs = candidate_graphs_parity(ranker, tower, tmp_path, inputs)
    assert diffs["ranker_on_vectors"] <= 1e-5 and diffs["user_states"] <= 1e-5, diffs


def test_a_ranker_too_large_for_candidate_graphs_is_exported_whole_only(
    trained: TrainedModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scalerec_models import onnx_export

    monkeypatch.setattr(onnx_export, "CANDIDATE_GRAPHS_MAX_ITEM_BYTES", 0)
    assert export_candidate_graphs(trained.ranker, trained.two_tower, tmp_path) == {}
    assert list(tmp_path.iterdir()) == []


def _initializers(path: Path) -> dict[str, tuple[int, ...]]:
    import onnx

    return {i.name: tuple(i.dims) for i in onnx.load(str(path)).graph.initializer}


def test_history_items_are_exported_as_one_precomputed_table(version: Path, trained: TrainedModels) -> None:
    """The history side gathers one row per item from a table the export computed (see onnx_export)."""
    n, dim, tower_dim = trained.vocab.size, trained.config.dim, trained.config.tower_dim
    tower = _initializers(version / "user_tower.onnx")
    # The user tower reads items only through that table: no id, category, price or token table is left.
    assert [k for k, v in tower.items() if v == (n, tower_dim)] == ["tower.encoder.encoder.items.table"]
    assert not [k for k in tower if "item_encoder" in k or "feature_table" in k], sorted(tower)
    ranker = _initializers(version / "ranker.onnx")
    assert ranker["encoder.encoder.items.table"] == (n, dim)
    assert "item_encoder.token.weight" in ranker  # the candidates' content is still encoded per request
    # The table holds what the torch encoder computes for every index, padding (0) and unknown (1) included.
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(version / "ranker.onnx")).graph
    table = next(numpy_helper.to_array(i) for i in graph.initializer if i.name == "encoder.encoder.items.table")
    with torch.no_grad():
        ids = torch.arange(n)
        expected = trained.ranker.item_encoder(ids, trained.ranker.hist_features(ids)).numpy()
    assert np.abs(table - expected).max() <= 1e-6
    assert not table[0].any()  # padding


def test_a_ranker_too_large_for_an_extra_table_encodes_its_history_per_request(
    trained: TrainedModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scalerec_models import onnx_export

    monkeypatch.setattr(onnx_export, "PRECOMPUTED_HISTORY_MAX_EXTRA_BYTES", 0)
    path = export_ranker(trained.ranker, tmp_path / "ranker.onnx")
    assert not [k for k in _initializers(path) if k.endswith("items.table")]
    rng = np.random.default_rng(1)
    n, length = trained.vocab.size, trained.config.history_len
    inputs = {
        "history": rng.integers(0, n, (3, length)),
        "context": np.array([[1, 2, 3, 4]] * 3),
        "candidates": rng.integers(1, n, (3, 6)),
        "candidate_features": rng.integers(0, 16, (3, 6, ITEM_FEATURE_LEN)),
    }
    assert ranker_parity(trained.ranker, path, inputs) <= 1e-5


def test_new_item_of_the_users_taste_is_recommended(version: Path) -> None:
    bundle = ModelBundle(version)
    catalogue = _catalogue()
    history = [f"jazz-{i}" for i in range(6)]
    others = [f"{cat}-{i}" for cat in ("metal", "opera") for i in range(5)]
    candidates = [*others, "jazz-brand-new"]
    feats = [catalogue[c] for c in others] + [item_feature_vector("jazz", 11.0, title="jazz record debut")]
    inputs = bundle.ranker_inputs([history], [[10, 2, 1, 5]], [candidates], [feats])
    assert inputs["candidates"][0, -1] == UNKNOWN
    out = bundle.rank(inputs)
    order = np.argsort(-out["scores"][0])
    assert order[0] == len(candidates) - 1, [candidates[i] for i in order[:3]]
    for key in ("p_click", "p_conversion"):
        assert ((out[key] > 0) & (out[key] < 1)).all()


def test_retrieval_finds_the_users_category(version: Path) -> None:
    bundle = ModelBundle(version)
    user = bundle.user_embedding(bundle.user_tower_inputs([[f"metal-{i}" for i in range(5)]], [[10, 2, 1, 5]]))
    assert bundle.item_embeddings is not None
    ann = AnnIndex(user.shape[1]).build(np.asarray(bundle.item_embeddings))
    _, idx = ann.search(user, 5)
    found = [bundle.item_ids([i])[0] or "" for i in idx[0]]
    assert sum(f.startswith("metal") for f in found) >= 4, found


def test_warm_start_keeps_item_indices(version: Path, trained: TrainedModels) -> None:
    more = _world(seed=1)
    cfg = trained.config.with_(epochs=1, tower_epochs=1)
    catalogue = {**_catalogue(), "jazz-late-arrival": item_feature_vector("jazz", 12.0)}
    again = train_models(more, catalogue, cfg, warm_start_dir=version, progress=False)
    assert again.vocab.items[: len(trained.vocab.items)] == trained.vocab.items
    assert again.vocab.index("jazz-late-arrival") == trained.vocab.size


def test_hashed_large_shape_constructs_and_exports(tmp_path: Path) -> None:
    # The production shape with a small bucket count: index = hash bucket, no vocabulary, content still used.
    cfg = model_config("large", item_buckets=5000, dim=16, layers=1, heads=2, history_len=8)
    model = SeqRanker(cfg, 5002, torch.zeros((2, ITEM_FEATURE_LEN), dtype=torch.long))
    path = export_ranker(model, tmp_path / "ranker.onnx")
    rng = np.random.default_rng(0)
    inputs = {
        "history": rng.integers(0, 5002, (2, 8)),
        "context": np.array([[1, 2, 3, 4]] * 2),
        "candidates": rng.integers(1, 5002, (2, 5)),
        "candidate_features": rng.integers(0, 16, (2, 5, 10)),
    }
    assert ranker_parity(model, path, inputs) <= 1e-5


def test_the_serving_graph_rewrites_keep_deeper_models_exact(tmp_path: Path) -> None:
    """Last layer for the last position only, the context as one table: exact for more layers and heads too.

    Untrained weights (the content tables' padding rows random), windows shorter than ``max_len``, histories
    fully padded, partly padded and full, context values out of every table's range at both ends.
    """
    torch.manual_seed(3)
    cfg = model_config("small", dim=16, layers=3, heads=4, history_len=12, max_len=20)
    n = 40
    features = torch.randint(0, 16, (n, ITEM_FEATURE_LEN))
    ranker, tower = SeqRanker(cfg, n, features).eval(), TwoTower(cfg, n, features).eval()
    before = {name: list(m.state_dict()) for name, m in (("ranker", ranker), ("tower", tower))}
    rng = np.random.default_rng(4)
    history = rng.integers(1, n, (4, cfg.history_len))
    history[0] = 0
    history[1, :7] = 0
    history[2, 5:9] = 0  # a gap inside the window
    context = np.array([[0, 0, 0, 0], [23, 6, 5, 63], [-5, -1, -9, -1], [99, 99, 99, 999]])
    inputs = {
        "history": history,
        "context": context,
        "candidates": rng.integers(1, n, (4, 9)),
        "candidate_features": rng.integers(0, 16, (4, 9, ITEM_FEATURE_LEN)),
    }
    assert ranker_parity(ranker, export_ranker(ranker, tmp_path / "ranker.onnx"), inputs) <= 1e-5
    path = export_user_tower(tower, cfg.history_len, tmp_path / "tower.onnx")
    assert user_tower_parity(tower, path, {"history": history, "context": context}) <= 1e-5
    # The export swaps modules in for its graph only: the trained models come back as they were.
    assert {name: list(m.state_dict()) for name, m in (("ranker", ranker), ("tower", tower))} == before


def test_an_export_that_cannot_rewrite_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    """A layer the rewrite does not reproduce (post-norm) is refused before any module is swapped."""
    cfg = model_config("small", dim=16, layers=1, heads=2, history_len=8)
    model = SeqRanker(cfg, 20, torch.zeros((20, ITEM_FEATURE_LEN), dtype=torch.long)).eval()
    model.encoder.layers.layers[0].norm_first = False
    keys = list(model.state_dict())
    with pytest.raises(ValueError, match="pre-norm"):
        export_ranker(model, tmp_path / "ranker.onnx")
    assert list(model.state_dict()) == keys
    assert model.encoder.items is model.item_encoder  # the history's items were not left precomputed
