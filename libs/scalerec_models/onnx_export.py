"""ONNX export of the ranker and the user tower, and the torch-vs-onnxruntime parity check (torch).

PyTorch >= 2.9 exports through the dynamo exporter (needs onnxscript).  Models
under 2 GB are written as one self-contained file; bigger ones (hashed tables of
tens of millions of rows) keep their weights in ``<file>.data`` next to it —
ONNX protobufs cannot exceed 2 GB.

The history side of both models is exported precomputed.  A history item's vector depends on its
index alone (its content comes from the model's own training-time feature table, not from the
request), so the export evaluates the item encoder once for every index and the graph gathers one
row per history item from that table, instead of an id row, a category row, a price row and ten
token rows and their sums.  The outputs are the same (the parity check compares them with the
unchanged torch model), the inputs are the same, and the request touches a table of one row per
item instead of the whole token table: at serving time, where Python work between two inference
calls evicts the weights from the CPU's caches, that matters more than the arithmetic saved.
Candidates keep the full encoder: their content is the catalogue's current one, sent per request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scalerec_features import ITEM_FEATURE_LEN
from scalerec_features.serving import CANDIDATE_FEATURES, CANDIDATES, CONTEXT, HISTORY

from scalerec_models.bundle import RANKER_INPUTS, RANKER_OUTPUTS, USER_TOWER_INPUTS, USER_TOWER_OUTPUTS
from scalerec_models.networks import SeqRanker, TwoTower

log = logging.getLogger(__name__)

ONNX_SINGLE_FILE_LIMIT = 1_800_000_000  # bytes of parameters; leaves headroom under protobuf's 2 GB
# The ranker keeps its item encoder for the candidates, so its precomputed history table is extra weight
# (one row per item, like the id table): above this many bytes it is left out and the history is encoded
# per request as before. The user tower's table replaces its item tables and is always precomputed.
PRECOMPUTED_HISTORY_MAX_EXTRA_BYTES = 256 << 20


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


class _PrecomputedItems(torch.nn.Module):
    """Stands in for a sequence encoder's item encoder: row ``i`` of the table is the vector of index ``i``."""

    table: torch.Tensor  # a registered buffer

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        # ``feats`` were looked up from the same training-time table the rows were computed with: unused.
        return torch.nn.functional.embedding(ids, self.table)


@torch.no_grad()
def history_item_table(model: SeqRanker | TwoTower, chunk: int = 65536) -> torch.Tensor:
    """[n_items, dim]: what the model's sequence encoder computes for each item index (row 0, padding, is 0)."""
    model.eval()
    encoder = model.encoder.items  # what the export replaces (the model's item encoder, shared)
    n, dim = encoder.id.num_embeddings, encoder.id.embedding_dim
    table = torch.empty(n, dim, dtype=encoder.id.weight.dtype)  # filled in place: hashed tables are large
    for start in range(0, n, chunk):
        ids = torch.arange(start, min(n, start + chunk))
        table[start : start + len(ids)] = encoder(ids, model.hist_features(ids))
    return table


@contextmanager
def _history_precomputed(model: SeqRanker | TwoTower) -> Iterator[None]:
    """While exporting: the sequence encoder reads item vectors from a precomputed table (see the module doc)."""
    encoder = model.encoder
    original = encoder.items
    # Module.__setattr__ registers it in the original's place; the original comes back afterwards.
    setattr(encoder, "items", _PrecomputedItems(history_item_table(model)))  # noqa: B010 (typed as ItemEncoder)
    try:
        yield
    finally:
        encoder.items = original


def _precompute_ranker_history(model: SeqRanker) -> bool:
    emb = model.item_encoder.id
    return emb.num_embeddings * emb.embedding_dim * 4 <= PRECOMPUTED_HISTORY_MAX_EXTRA_BYTES


def example_ranker_inputs(history_len: int, batch: int = 2, n: int = 3, n_items: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        HISTORY.name: torch.randint(0, n_items, (batch, history_len), generator=g),
        CONTEXT.name: torch.tensor([[12, 3, 1, 5]] * batch, dtype=torch.int64),
        CANDIDATES.name: torch.randint(1, n_items, (batch, n), generator=g),
        CANDIDATE_FEATURES.name: torch.randint(0, 16, (batch, n, ITEM_FEATURE_LEN), generator=g),
    }


def _export(
    model: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    dynamic: dict[str, Any],
    external: bool | None,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if external is None:
        external = _param_bytes(model) > ONNX_SINGLE_FILE_LIMIT
    model.eval()
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_shapes=dynamic,
            external_data=external,
            optimize=True,
            verbose=False,
        )
    assert program is not None
    program.save(str(path), external_data=external)
    return path


def export_ranker(model: SeqRanker, path: str | Path, external_data: bool | None = None) -> Path:
    """Write ``scalerec_ranker`` with the tensors of scalerec_features.serving.RANKER (batch, L and N dynamic)."""
    batch, n = torch.export.Dim("batch", min=1, max=65536), torch.export.Dim("candidates", min=1, max=1 << 20)
    ex = example_ranker_inputs(model.cfg.history_len, n_items=min(10, model.feature_table.shape[0]))
    dyn = {
        HISTORY.name: {0: batch},
        CONTEXT.name: {0: batch},
        CANDIDATES.name: {0: batch, 1: n},
        CANDIDATE_FEATURES.name: {0: batch, 1: n},
    }
    args = tuple(ex[k] for k in RANKER_INPUTS)
    with _history_precomputed(model) if _precompute_ranker_history(model) else nullcontext():
        return _export(model, args, Path(path), RANKER_INPUTS, RANKER_OUTPUTS, dyn, external_data)


class _UserTower(torch.nn.Module):
    def __init__(self, tower: TwoTower) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, history: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.tower(history, context)


def export_user_tower(model: TwoTower, history_len: int, path: str | Path, external_data: bool | None = None) -> Path:
    """Write ``scalerec_user_tower`` with the tensors of scalerec_features.serving.USER_TOWER (batch dynamic)."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    ex = example_ranker_inputs(history_len, n_items=min(10, model.feature_table.shape[0]))
    with _history_precomputed(model):
        return _export(
            _UserTower(model),
            tuple(ex[k] for k in USER_TOWER_INPUTS),
            Path(path),
            USER_TOWER_INPUTS,
            USER_TOWER_OUTPUTS,
            {HISTORY.name: {0: batch}, CONTEXT.name: {0: batch}},
            external_data,
        )


def _ort(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@torch.no_grad()
def ranker_parity(model: SeqRanker, path: str | Path, inputs: dict[str, np.ndarray]) -> float:
    """Max |torch - onnxruntime| over the three outputs for these inputs."""
    model.eval()
    ref = model(*(torch.from_numpy(inputs[k]) for k in RANKER_INPUTS))
    got = _ort(Path(path)).run(list(RANKER_OUTPUTS), {k: inputs[k] for k in RANKER_INPUTS})
    return max(float(np.abs(r.numpy() - g).max()) for r, g in zip(ref, got, strict=True))


@torch.no_grad()
def user_tower_parity(model: TwoTower, path: str | Path, inputs: dict[str, np.ndarray]) -> float:
    model.eval()
    ref = model(*(torch.from_numpy(inputs[k]) for k in USER_TOWER_INPUTS)).numpy()
    got = _ort(Path(path)).run(list(USER_TOWER_OUTPUTS), {k: inputs[k] for k in USER_TOWER_INPUTS})[0]
    return float(np.abs(ref - got).max())
