"""The serving side of a model version (numpy + onnxruntime, never torch).

A version directory written by :func:`scalerec_models.export.export` holds::

    ranker.onnx          scalerec_ranker: history, context, candidates, candidate_features -> scores, p_click, p_conversion
    user_tower.onnx      scalerec_user_tower: history, context -> user_embedding
    candidate_encoder.onnx   (optional) candidates, candidate_features -> candidate_vectors
    ranker_on_vectors.onnx   (optional) history, context, candidate_vectors -> scores, p_click, p_conversion
    user_states.onnx         (optional) history, context -> user_embedding (the user tower's), ranker_state
    item_embeddings.npy  [V, D] float32, row = item index
    item_features.npy    [V, ITEM_FEATURE_LEN] int64 content features by item index (the training-time catalogue)
    vocab.json           ItemVocab (0 = pad, 1 = unknown, items from 2; or hashed buckets)
    config.json          ModelConfig (history_len, dims, ...)

:class:`ModelBundle` turns request data (item ids, context lists, candidate
ids and feature vectors) into exactly the arrays the ONNX contract expects, so
the ranker, the evaluator and Triton clients cannot disagree on padding or
indexing.  The tensors are scalerec_features.serving's contract; docs/models.md explains it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scalerec_features import CONTEXT_FIELDS, ITEM_FEATURE_LEN
from scalerec_features.serving import CANDIDATE_FEATURES, CANDIDATES, CONTEXT, HISTORY, RANKER, USER_TOWER

from scalerec_models.config import ModelConfig
from scalerec_models.data import FIRST_ITEM, ItemVocab

RANKER_FILE = "ranker.onnx"
USER_TOWER_FILE = "user_tower.onnx"
# The ranker split at its candidate vectors, for in-process scoring (scalerec_models.onnx_export): written
# into the ranker's version folder next to model.onnx, which Triton serves whole.
CANDIDATE_ENCODER_FILE = "candidate_encoder.onnx"
RANKER_ON_VECTORS_FILE = "ranker_on_vectors.onnx"
USER_STATES_FILE = "user_states.onnx"  # both models' user side; scores from it by scores_on_vectors
CANDIDATE_GRAPH_FILES = (CANDIDATE_ENCODER_FILE, RANKER_ON_VECTORS_FILE, USER_STATES_FILE)


def scores_on_vectors(ranker_state: np.ndarray, candidate_vectors: np.ndarray) -> np.ndarray:
    """The ranker's ``scores`` from its state [D] and candidates' vectors [N, D]: its score head, one dot
    product (``SeqRanker.score_vectors``).  The export checks this against torch for every version that
    carries ``user_states.onnx`` (``onnx_export.candidate_graphs_parity``), so a change to the head that this
    function does not follow fails there, not in serving."""
    return candidate_vectors @ ranker_state


ITEM_EMBEDDINGS_FILE = "item_embeddings.npy"
ITEM_FEATURES_FILE = "item_features.npy"
VOCAB_FILE = "vocab.json"
CONFIG_FILE = "config.json"

# Tensor names, in the order the ONNX graphs take and give them (scalerec_features.serving owns them).
RANKER_INPUTS = RANKER.input_names
RANKER_OUTPUTS = RANKER.output_names
USER_TOWER_INPUTS = USER_TOWER.input_names
USER_TOWER_OUTPUTS = USER_TOWER.output_names


class ModelBundle:
    """One exported model version: vocabulary, config, item tables and (lazily) onnxruntime sessions."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        missing = [f for f in (CONFIG_FILE, VOCAB_FILE) if not (self.path / f).exists()]
        if missing:
            raise FileNotFoundError(f"model version {self.path} lacks {', '.join(missing)}")
        self.config = ModelConfig.load(self.path / CONFIG_FILE)
        self.vocab = ItemVocab.load(self.path / VOCAB_FILE)
        feats = self.path / ITEM_FEATURES_FILE
        self.item_features = np.load(feats) if feats.exists() else np.zeros((FIRST_ITEM, ITEM_FEATURE_LEN), np.int64)
        emb = self.path / ITEM_EMBEDDINGS_FILE
        # Memory-mapped: a large catalogue's table is paged in on demand, not copied per process.
        self.item_embeddings: np.ndarray | None = np.load(emb, mmap_mode="r") if emb.exists() else None
        self._sessions: dict[str, Any] = {}

    @property
    def history_len(self) -> int:
        return self.config.history_len

    # ------------------------------------------------------------ encoding

    def encode_history(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """[B, history_len] int64, left-padded with 0, most recent item last; unknown items -> 1."""
        out = np.zeros((len(histories), self.history_len), dtype=np.int64)
        for r, h in enumerate(histories):
            idx = self.vocab.indices(list(h)[-self.history_len :])
            if len(idx):
                out[r, self.history_len - len(idx) :] = idx
        return out

    @staticmethod
    def encode_context(contexts: Sequence[Sequence[int]]) -> np.ndarray:
        """[B, len(CONTEXT_FIELDS)] int64 from ``context_features`` lists."""
        ctx = np.asarray(contexts, dtype=np.int64).reshape(len(contexts), -1)
        if ctx.shape[1] != len(CONTEXT_FIELDS):
            raise ValueError(
                f"context must have {len(CONTEXT_FIELDS)} values [{', '.join(CONTEXT_FIELDS)}], got {ctx.shape[1]}"
            )
        return ctx

    def features_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Training-time content features of known items (zeros for unknown ones)."""
        idx = self.vocab.indices(item_ids)
        idx = np.where(idx < len(self.item_features), idx, 0)
        return self.item_features[idx]

    def encode_candidates(
        self,
        candidates: Sequence[Sequence[str]],
        candidate_features: Sequence[Sequence[Sequence[int]] | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> (candidates [B, N] int64, candidate_features [B, N, ITEM_FEATURE_LEN] int64), right-padded with 0.

        Features given by the caller (the live catalogue) win; otherwise the
        training-time table is used.  A new item keeps index 1 but is ranked
        through the features passed here.
        """
        n = max((len(c) for c in candidates), default=0)
        ids = np.zeros((len(candidates), n), dtype=np.int64)
        feats = np.zeros((len(candidates), n, ITEM_FEATURE_LEN), dtype=np.int64)
        for r, cand in enumerate(candidates):
            cand = list(cand)
            if not cand:
                continue
            ids[r, : len(cand)] = self.vocab.indices(cand)
            given = candidate_features[r] if candidate_features is not None else None
            if given is not None:
                f = np.asarray(given, dtype=np.int64).reshape(len(cand), ITEM_FEATURE_LEN)
            else:
                f = self.features_of(cand)
            feats[r, : len(cand)] = f
        return ids, feats

    def ranker_inputs(
        self,
        histories: Sequence[Sequence[str]],
        contexts: Sequence[Sequence[int]],
        candidates: Sequence[Sequence[str]],
        candidate_features: Sequence[Sequence[Sequence[int]] | None] | None = None,
    ) -> dict[str, np.ndarray]:
        """The exact input dict of ``scalerec_ranker`` for a batch of requests."""
        if not (len(histories) == len(contexts) == len(candidates)):
            raise ValueError("histories, contexts and candidates must have one entry per request")
        cand, feats = self.encode_candidates(candidates, candidate_features)
        return {
            HISTORY.name: self.encode_history(histories),
            CONTEXT.name: self.encode_context(contexts),
            CANDIDATES.name: cand,
            CANDIDATE_FEATURES.name: feats,
        }

    def user_tower_inputs(
        self, histories: Sequence[Sequence[str]], contexts: Sequence[Sequence[int]]
    ) -> dict[str, np.ndarray]:
        return {HISTORY.name: self.encode_history(histories), CONTEXT.name: self.encode_context(contexts)}

    # ------------------------------------------------------------ in-process scoring

    def session(self, file: str) -> Any:
        """An onnxruntime session for ``ranker.onnx`` or ``user_tower.onnx`` (created once)."""
        if file not in self._sessions:
            import onnxruntime as ort

            path = self.path / file
            if not path.exists():
                raise FileNotFoundError(f"model version {self.path} has no {file}")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            self._sessions[file] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return self._sessions[file]

    def rank(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the ranker on ``ranker_inputs(...)``; padded candidate slots should be ignored by the caller."""
        outs = self.session(RANKER_FILE).run(list(RANKER_OUTPUTS), dict(inputs))
        return dict(zip(RANKER_OUTPUTS, outs, strict=True))

    def user_embedding(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.session(USER_TOWER_FILE).run(list(USER_TOWER_OUTPUTS), dict(inputs))[0]

    def item_ids(self, indices: Sequence[int]) -> list[str | None]:
        """Item ids of embedding rows (e.g. ANN results); None for pad/unknown/hashed rows."""
        return [self.vocab.item_id(int(i)) for i in indices]
