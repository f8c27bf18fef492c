"""Write a tiny, real example ranker and user tower into ``model_repository/`` (version 1).

Why: the repository must never be empty — Triton, the ranker's embedded scorer and the
tests need a model that follows the serving contract before the trainer has run once.
The graphs are built with ``onnx.helper`` from seeded random weights (no training, no
torch): hashed-id embedding tables, a mean-pooled history, and multi-task heads.

    .venv/bin/python scripts/triton/make_example_model.py [--repository model_repository] [--seed 0]

``build_ranker`` and ``build_user_tower`` are importable so tests can make more versions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "libs"))

from scalerec_features import HISTORY_LEN
from scalerec_features.serving import CANDIDATE_FEATURES, CANDIDATES, CONTEXT, HISTORY, RANKER, USER_EMBEDDING
from scalerec_models.config import ModelConfig
from scalerec_models.data import FIRST_ITEM, ItemVocab
from scalerec_models.repository import (
    RANKER_MODEL,
    USER_TOWER_MODEL,
    list_versions,
    write_champion,
    write_model_version,
)

OPSET = 17
VOCAB = 1000  # hashed id buckets
DIM = 16


def _weights(seed: int, vocab: int, dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(dim)
    return {
        "item_table": (rng.standard_normal((vocab, dim)) * scale).astype(np.float32),
        "context_table": (rng.standard_normal((vocab, dim)) * scale).astype(np.float32),
        "feature_table": (rng.standard_normal((vocab, dim)) * scale).astype(np.float32),
        "vocab": np.array(vocab, dtype=np.int64),
        "conv_w": np.array(0.7, dtype=np.float32),
        "conv_b": np.array(-1.0, dtype=np.float32),
        "conv_weight_in_score": np.array(0.5, dtype=np.float32),
    }


def _user_nodes() -> list[onnx.NodeProto]:
    """history [B,L] + context [B,4] -> user [B,D] = mean(item_table[history]) + sum(context_table[context])."""
    n = helper.make_node
    return [
        n("Mod", ["history", "vocab"], ["history_h"]),
        n("Gather", ["item_table", "history_h"], ["history_emb"]),
        n("ReduceMean", ["history_emb"], ["history_mean"], axes=[1], keepdims=0),
        n("Mod", ["context", "vocab"], ["context_h"]),
        n("Gather", ["context_table", "context_h"], ["context_emb"]),
        n("ReduceSum", ["context_emb", "axis1"], ["context_sum"], keepdims=0),
        n("Add", ["history_mean", "context_sum"], ["user"]),
    ]


def build_ranker(path: Path, *, seed: int = 0, vocab: int = VOCAB, dim: int = DIM) -> Path:
    """The contract's ranker: (history, context, candidates, candidate_features) -> scores, p_click, p_conversion."""
    w = _weights(seed, vocab, dim)
    n = helper.make_node
    nodes = [
        *_user_nodes(),
        n("Mod", ["candidates", "vocab"], ["cand_h"]),
        n("Gather", ["item_table", "cand_h"], ["cand_emb"]),  # [B,N,D]
        n("Mod", ["candidate_features", "vocab"], ["feat_h"]),
        n("Gather", ["feature_table", "feat_h"], ["feat_emb"]),  # [B,N,10,D]
        n("ReduceMean", ["feat_emb"], ["feat_mean"], axes=[2], keepdims=0),  # [B,N,D]
        n("Add", ["cand_emb", "feat_mean"], ["item"]),
        n("Unsqueeze", ["user", "axis1"], ["user_b"]),  # [B,1,D]
        n("Mul", ["item", "user_b"], ["inter"]),
        n("ReduceSum", ["inter", "axis_last"], ["logit"], keepdims=0),  # [B,N]
        n("Sigmoid", ["logit"], ["p_click"]),
        n("Mul", ["logit", "conv_w"], ["conv_scaled"]),
        n("Add", ["conv_scaled", "conv_b"], ["conv_logit"]),
        n("Sigmoid", ["conv_logit"], ["p_conversion"]),
        n("Mul", ["p_conversion", "conv_weight_in_score"], ["conv_part"]),
        n("Add", ["p_click", "conv_part"], ["scores"]),
    ]
    initialisers = [numpy_helper.from_array(v, k) for k, v in w.items()]
    initialisers += [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
    ]
    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "scalerec_example_ranker",
        [
            helper.make_tensor_value_info(HISTORY.name, i64, ["B", "L"]),
            helper.make_tensor_value_info(CONTEXT.name, i64, ["B", *CONTEXT.dims]),
            helper.make_tensor_value_info(CANDIDATES.name, i64, ["B", "N"]),
            helper.make_tensor_value_info(CANDIDATE_FEATURES.name, i64, ["B", "N", CANDIDATE_FEATURES.dims[-1]]),
        ],
        [helper.make_tensor_value_info(name, f32, ["B", "N"]) for name in RANKER.output_names],
        initialisers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="scalerec-example")
    model.ir_version = 8  # readable by the onnxruntime in Triton 2.51 and in the venv
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def build_user_tower(path: Path, *, seed: int = 0, vocab: int = VOCAB, dim: int = DIM) -> Path:
    """The contract's user tower: (history, context) -> user_embedding [B, D]."""
    w = _weights(seed, vocab, dim)
    nodes = [*_user_nodes(), helper.make_node("Identity", ["user"], [USER_EMBEDDING.name])]
    initialisers = [numpy_helper.from_array(w[k], k) for k in ("item_table", "context_table", "vocab")]
    initialisers.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
    i64 = TensorProto.INT64
    graph = helper.make_graph(
        nodes,
        "scalerec_example_user_tower",
        [
            helper.make_tensor_value_info(HISTORY.name, i64, ["B", "L"]),
            helper.make_tensor_value_info(CONTEXT.name, i64, ["B", *CONTEXT.dims]),
        ],
        [helper.make_tensor_value_info(USER_EMBEDDING.name, TensorProto.FLOAT, ["B", dim])],
        initialisers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="scalerec-example")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def example_card(seed: int) -> dict[str, object]:
    return {
        "description": "Example model: seeded random weights, untrained. Replaced by the trainer's first version.",
        "trained": False,
        "seed": seed,
        "metrics": {},
        "data_window": None,
        "feature_version": "v1",
    }


def write_examples(repository: Path, *, seed: int = 0, max_batch_size: int = 256) -> dict[str, int]:
    """Write one version of each example model and make it champion; returns model -> version."""
    written = {}
    with tempfile.TemporaryDirectory() as tmp:
        # What the ranker's ModelBundle reads next to model.onnx: hashed item rows that stay inside the
        # example's tables (index = 2 + hash % buckets < VOCAB), and the history length it pads to.
        extras = {"vocab.json": Path(tmp) / "vocab.json", "config.json": Path(tmp) / "config.json"}
        ItemVocab(buckets=VOCAB - FIRST_ITEM).save(extras["vocab.json"])
        ModelConfig(size="example", dim=DIM, history_len=HISTORY_LEN, item_buckets=VOCAB - FIRST_ITEM).save(
            extras["config.json"]
        )
        for model, build in ((RANKER_MODEL, build_ranker), (USER_TOWER_MODEL, build_user_tower)):
            onnx_path = build(Path(tmp) / f"{model}.onnx", seed=seed)
            version = write_model_version(
                repository,
                model,
                onnx_path,
                card=example_card(seed),
                max_batch_size=max_batch_size,
                extra_files=extras,
            )
            write_champion(repository, model, version)
            written[model] = version
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path(__file__).resolve().parents[2] / "model_repository")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="write even if the models already have versions")
    args = parser.parse_args()
    if not args.force and any(list_versions(args.repository, m) for m in (RANKER_MODEL, USER_TOWER_MODEL)):
        print(f"{args.repository} already has versions; use --force to add another")
        return
    print(write_examples(args.repository, seed=args.seed))


if __name__ == "__main__":
    main()
