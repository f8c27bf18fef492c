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

Two more rewrites make the graph smaller without changing what it computes (:func:`_serving_graph`).
Serving reads the sequence encoder's state at the last position only, so its last layer is computed
for that position alone: every position's keys and values, one query, the feed-forward of one row
(the layers before it still run over the whole window). And the context's four embedding tables
become one, looked up once with per-column offsets, instead of a split, a clamp, a gather and an
add per column. For the demo's one-layer model the ranker's graph went from 111 to 74 nodes; with
small models onnxruntime's cost is per node more than per multiply, on a GPU a kernel launch each.

Beside the ranker, :func:`export_candidate_graphs` writes the same ranker split at its candidate
vectors, for in-process scoring: a candidate's vector depends on the item alone (its index and its
current content), so the ranker computes it once per item — when a version is activated and when the
item changes — instead of once per candidate per request (``scalerec_ranker.items``).  With them goes
``user_states.onnx``: the user tower and the ranker's user side in one graph, so that a request runs
one graph (its state's scores against the candidates' vectors are a dot product,
:func:`scalerec_models.bundle.scores_on_vectors`) instead of the user tower and then the ranker.
Triton keeps serving the whole graphs; versions without these are scored whole everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from scalerec_features import ITEM_FEATURE_LEN
from scalerec_features.serving import (
    CANDIDATE_ENCODER,
    CANDIDATE_FEATURES,
    CANDIDATE_VECTORS,
    CANDIDATES,
    CONTEXT,
    HISTORY,
    RANKER_ON_VECTORS,
    USER_STATES,
)

from scalerec_models.bundle import (
    CANDIDATE_ENCODER_FILE,
    RANKER_INPUTS,
    RANKER_ON_VECTORS_FILE,
    RANKER_OUTPUTS,
    USER_STATES_FILE,
    USER_TOWER_INPUTS,
    USER_TOWER_OUTPUTS,
    scores_on_vectors,
)
from scalerec_models.networks import ContextEncoder, SeqRanker, SequenceEncoder, TwoTower

log = logging.getLogger(__name__)

ONNX_SINGLE_FILE_LIMIT = 1_800_000_000  # bytes of parameters; leaves headroom under protobuf's 2 GB
# The ranker keeps its item encoder for the candidates, so its precomputed history table is extra weight
# (one row per item, like the id table): above this many bytes it is left out and the history is encoded
# per request as before. The user tower's table replaces its item tables and is always precomputed.
PRECOMPUTED_HISTORY_MAX_EXTRA_BYTES = 256 << 20
# The candidate graphs repeat the ranker's item tables (the encoder) and its sequence side (the ranker on
# vectors): for item encoders above this many bytes (hashed tables of millions of rows) they are not
# written, and the version is scored whole, as before.
CANDIDATE_GRAPHS_MAX_ITEM_BYTES = 256 << 20


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


class _LastState(torch.nn.Module):
    """Stands in for a sequence encoder when only the last position's state is read: [B, 1, dim].

    The same arithmetic as :class:`SequenceEncoder` in eval mode for that position: the layers before
    the last run over the whole window with the full mask; the last layer (pre-norm, as the encoder
    builds it) attends from the last position to every key its mask row allows — all of them but
    padding — and runs its feed-forward on that one row.
    """

    def __init__(self, encoder: SequenceEncoder) -> None:
        super().__init__()
        for layer in encoder.layers.layers:
            attn = layer.self_attn
            if not (
                layer.norm_first
                and attn.batch_first
                and attn._qkv_same_embed_dim
                and attn.in_proj_bias is not None
                and attn.bias_k is None
                and not attn.add_zero_attn
            ):
                raise ValueError(
                    "_LastState reproduces the layers SequenceEncoder builds: pre-norm, batch first, packed q/k/v"
                    " projections with biases, no extra key/value bias or zero attention"
                )
        self.encoder = encoder

    def forward(self, history: torch.Tensor, hist_feats: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        length = history.shape[1]
        x = enc.items(history, hist_feats) * (enc.dim**0.5)
        x = x + enc.pos.weight[enc.max_len - length :].unsqueeze(0)
        *before, last = enc.layers.layers
        if before:
            mask = enc.attention_mask(history, x.dtype)
            for layer in before:
                x = layer(x, src_mask=mask)
        # The last row of the mask: padding keys hidden, except the last position itself.
        hidden = (history == 0) & (torch.arange(length, device=history.device) < length - 1)
        return enc.norm(self._last_row(cast(torch.nn.TransformerEncoderLayer, last), x, hidden.to(x.dtype) * -1e9))

    @staticmethod
    def _last_row(layer: torch.nn.TransformerEncoderLayer, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        attn = layer.self_attn
        batch, length, dim = x.shape
        heads = attn.num_heads
        head_dim = dim // heads
        y = layer.norm1(x)
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q = torch.nn.functional.linear(y[:, -1:], w[:dim], b[:dim]).view(batch, 1, heads, head_dim).transpose(1, 2)
        k, v = torch.nn.functional.linear(y, w[dim:], b[dim:]).view(batch, length, 2, heads, head_dim).unbind(2)
        logits = q @ k.permute(0, 2, 3, 1) * head_dim**-0.5 + key_bias[:, None, None, :]  # [B, heads, 1, L]
        att = (logits.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2).reshape(batch, 1, dim)
        out = x[:, -1:] + attn.out_proj(att)
        return out + layer.linear2(layer.activation(layer.linear1(layer.norm2(out))))


class _OneTableContext(torch.nn.Module):
    """Stands in for a :class:`ContextEncoder`: its tables as one, one lookup for every column."""

    table: torch.Tensor
    offsets: torch.Tensor
    top: torch.Tensor

    def __init__(self, context: ContextEncoder) -> None:
        super().__init__()
        sizes = [t.num_embeddings for t in context.embeddings]
        self.register_buffer("table", torch.cat([t.weight.detach() for t in context.embeddings]))
        self.register_buffer("offsets", torch.tensor([0, *sizes[:-1]]).cumsum(0))
        self.register_buffer("top", torch.tensor(sizes) - 1)
        self.columns = len(sizes)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        # Each column clamped into its own table, as ContextEncoder does, then moved to its rows here.
        rows = torch.minimum(context[..., : self.columns].clamp(min=0), self.top) + self.offsets
        return torch.nn.functional.embedding(rows, self.table).sum(-2)


@contextmanager
def _serving_graph(model: SeqRanker | TwoTower, history_table: bool) -> Iterator[None]:
    """While exporting: the rewrites of the module doc (the history's item table only with ``history_table``)."""
    encoder = model.encoder
    items, context = encoder.items, model.context
    # Every stand-in is built before the model is touched, so a failure leaves it as it was.
    table = _PrecomputedItems(history_item_table(model)) if history_table else None
    last = _LastState(encoder)
    one_table = _OneTableContext(context) if context is not None else None
    try:
        # Module.__setattr__ registers each in the original's place; the originals come back afterwards.
        if table is not None:
            setattr(encoder, "items", table)  # noqa: B010 (typed as ItemEncoder)
        setattr(model, "encoder", last)  # noqa: B010 (typed as SequenceEncoder)
        if one_table is not None:
            setattr(model, "context", one_table)  # noqa: B010 (typed as ContextEncoder)
        yield
    finally:
        model.encoder, model.context, encoder.items = encoder, context, items


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
    with _serving_graph(model, history_table=_precompute_ranker_history(model)):
        return _export(model, args, Path(path), RANKER_INPUTS, RANKER_OUTPUTS, dyn, external_data)


class _CandidateEncoder(torch.nn.Module):
    """candidates [B, N], candidate_features [B, N, F] -> candidate_vectors [B, N, D]: the ranker's item encoder."""

    def __init__(self, ranker: SeqRanker) -> None:
        super().__init__()
        self.items = ranker.item_encoder

    def forward(self, candidates: torch.Tensor, candidate_features: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.items(candidates, candidate_features))


class _RankerOnVectors(torch.nn.Module):
    """:meth:`SeqRanker.forward` from the candidates' vectors on: the same heads on the same state."""

    def __init__(self, ranker: SeqRanker) -> None:
        super().__init__()
        self.ranker = ranker

    def forward(
        self, history: torch.Tensor, context: torch.Tensor, candidate_vectors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.ranker.score_vectors(self.ranker.user_states(history, context)[:, -1], candidate_vectors)


class _UserStates(torch.nn.Module):
    """history, context -> the user tower's embedding and the ranker's state (:data:`USER_STATES`)."""

    def __init__(self, ranker: SeqRanker, tower: TwoTower) -> None:
        super().__init__()
        self.ranker, self.tower = ranker, tower

    def forward(self, history: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tower(history, context), self.ranker.user_states(history, context)[:, -1]


def export_candidate_graphs(model: SeqRanker, tower: TwoTower, folder: str | Path) -> dict[str, Path]:
    """Write ``candidate_encoder.onnx``, ``ranker_on_vectors.onnx`` and ``user_states.onnx`` into ``folder``
    (see the module doc); ``tower`` is the version's user tower.

    Returns {} and writes nothing for a model whose item encoder is over ``CANDIDATE_GRAPHS_MAX_ITEM_BYTES``.
    """
    if _param_bytes(model.item_encoder) > CANDIDATE_GRAPHS_MAX_ITEM_BYTES:
        log.info(
            "item encoder over %d bytes: no candidate graphs, the version is scored whole",
            CANDIDATE_GRAPHS_MAX_ITEM_BYTES,
        )
        return {}
    folder = Path(folder)
    batch, n = torch.export.Dim("batch", min=1, max=65536), torch.export.Dim("candidates", min=1, max=1 << 20)
    ex = example_ranker_inputs(model.cfg.history_len, n_items=min(10, model.feature_table.shape[0]))
    candidates = (ex[CANDIDATES.name], ex[CANDIDATE_FEATURES.name])
    encoder = _export(
        _CandidateEncoder(model),
        candidates,
        folder / CANDIDATE_ENCODER_FILE,
        CANDIDATE_ENCODER.input_names,
        CANDIDATE_ENCODER.output_names,
        {CANDIDATES.name: {0: batch, 1: n}, CANDIDATE_FEATURES.name: {0: batch, 1: n}},
        False,
    )
    with torch.no_grad():
        vectors = model.item_encoder(*candidates)
    with _serving_graph(model, history_table=_precompute_ranker_history(model)):
        on_vectors = _export(
            _RankerOnVectors(model),
            (ex[HISTORY.name], ex[CONTEXT.name], vectors),
            folder / RANKER_ON_VECTORS_FILE,
            RANKER_ON_VECTORS.input_names,
            RANKER_ON_VECTORS.output_names,
            {HISTORY.name: {0: batch}, CONTEXT.name: {0: batch}, CANDIDATE_VECTORS.name: {0: batch, 1: n}},
            False,
        )
        with _serving_graph(tower, history_table=True):
            states = _export(
                _UserStates(model, tower),
                (ex[HISTORY.name], ex[CONTEXT.name]),
                folder / USER_STATES_FILE,
                USER_STATES.input_names,
                USER_STATES.output_names,
                {HISTORY.name: {0: batch}, CONTEXT.name: {0: batch}},
                False,
            )
    return {"candidate_encoder": encoder, "ranker_on_vectors": on_vectors, "user_states": states}


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
    with _serving_graph(model, history_table=True):
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
def candidate_graphs_parity(
    ranker: SeqRanker, tower: TwoTower, folder: str | Path, inputs: dict[str, np.ndarray]
) -> dict[str, float]:
    """Max |torch - serving| through the candidate graphs: ``ranker_on_vectors`` over the ranker's three
    outputs (the encoder's vectors fed to the ranker on vectors), ``user_states`` over the user tower's
    embedding and the ranker's scores from ``user_states.onnx``'s state (:func:`scores_on_vectors`, as the
    ranker computes them)."""
    ranker.eval()
    tower.eval()
    folder = Path(folder)
    ref = ranker(*(torch.from_numpy(inputs[k]) for k in RANKER_INPUTS))
    user = {HISTORY.name: inputs[HISTORY.name], CONTEXT.name: inputs[CONTEXT.name]}
    encoder_inputs = {k: inputs[k] for k in CANDIDATE_ENCODER.input_names}
    (vectors,) = _ort(folder / CANDIDATE_ENCODER_FILE).run(list(CANDIDATE_ENCODER.output_names), encoder_inputs)
    got = _ort(folder / RANKER_ON_VECTORS_FILE).run(list(RANKER_OUTPUTS), {**user, CANDIDATE_VECTORS.name: vectors})
    embedding, state = _ort(folder / USER_STATES_FILE).run(list(USER_STATES.output_names), user)
    scores = np.stack([scores_on_vectors(state[b], vectors[b]) for b in range(len(state))])
    ref_embedding = tower(*(torch.from_numpy(v) for v in user.values())).numpy()
    return {
        "ranker_on_vectors": max(float(np.abs(r.numpy() - g).max()) for r, g in zip(ref, got, strict=True)),
        "user_states": max(
            float(np.abs(ref_embedding - embedding).max()), float(np.abs(ref[0].numpy() - scores).max())
        ),
    }


@torch.no_grad()
def user_tower_parity(model: TwoTower, path: str | Path, inputs: dict[str, np.ndarray]) -> float:
    model.eval()
    ref = model(*(torch.from_numpy(inputs[k]) for k in USER_TOWER_INPUTS)).numpy()
    got = _ort(Path(path)).run(list(USER_TOWER_OUTPUTS), {k: inputs[k] for k in USER_TOWER_INPUTS})[0]
    return float(np.abs(ref - got).max())
