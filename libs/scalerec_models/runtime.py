"""A trained model version as the ranker and the evaluator run it: numpy and onnx inputs, no torch.

The version folder (written by the trainer, Triton layout) holds, next to
``model.onnx``: ``vocab.json`` (item id → index), ``config.json`` (the model
config: history length), ``item_embeddings.npy`` (retrieval vectors by item
index) and ``item_neighbors.json`` (item-item CF neighbours).  ``encode`` builds
exactly the input tensors of the serving contract (docs/models.md), so the
evaluator measures what the ranker serves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scalerec_features import ITEM_FEATURE_LEN
from scalerec_models import repository as repo
from scalerec_models.config import ModelConfig
from scalerec_models.data import ItemVocab


@dataclass
class ModelVersion:
    version: int
    vocab: ItemVocab
    history_len: int
    item_embeddings: np.ndarray | None = None  # [V, D], L2-normalised rows
    neighbors: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    card: dict = field(default_factory=dict)
    _ann: object | None = None

    @classmethod
    def load(cls, repository: Path, version: int, model: str = repo.RANKER_MODEL) -> ModelVersion:
        folder = Path(repository) / model / str(version)
        if not (folder / repo.MODEL_FILE).exists():
            raise FileNotFoundError(f"{model} version {version}: no {repo.MODEL_FILE} in {folder}")
        vocab = ItemVocab.load(folder / "vocab.json")
        config = ModelConfig.load(folder / "config.json") if (folder / "config.json").exists() else ModelConfig()
        emb = None
        if (folder / "item_embeddings.npy").exists():
            emb = np.load(folder / "item_embeddings.npy").astype(np.float32)
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-8)
        neighbors: dict[str, list[tuple[str, float]]] = {}
        if (folder / "item_neighbors.json").exists():
            raw = json.loads((folder / "item_neighbors.json").read_text())
            neighbors = {k: [(str(a), float(b)) for a, b in v] for k, v in raw.items()}
        card = repo.read_card(Path(repository), model, version)
        return cls(version, vocab, config.history_len, emb, neighbors, card)

    def encode(
        self,
        histories: Sequence[Sequence[str]],
        contexts: Sequence[Sequence[int]],
        candidates: Sequence[Sequence[str]],
        candidate_features: Sequence[Sequence[Sequence[int]]],
    ) -> dict[str, np.ndarray]:
        """Input tensors for a batch of requests; candidate lists are right-padded to the longest."""
        b = len(histories)
        n = max((len(c) for c in candidates), default=1) or 1
        hist = np.zeros((b, self.history_len), dtype=np.int64)
        cand = np.zeros((b, n), dtype=np.int64)
        feats = np.zeros((b, n, ITEM_FEATURE_LEN), dtype=np.int64)
        for i in range(b):
            h = self.vocab.indices(histories[i][-self.history_len :])
            if len(h):
                hist[i, -len(h) :] = h
            c = self.vocab.indices(candidates[i])
            cand[i, : len(c)] = c
            if len(c):
                feats[i, : len(c)] = np.asarray(candidate_features[i], dtype=np.int64).reshape(len(c), ITEM_FEATURE_LEN)
        return {
            "history": hist,
            "context": np.asarray(contexts, dtype=np.int64).reshape(b, 4),
            "candidates": cand,
            "candidate_features": feats,
        }

    def encode_user(self, histories: Sequence[Sequence[str]], contexts: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        inputs = self.encode(histories, contexts, [[] for _ in histories], [[] for _ in histories])
        return {"history": inputs["history"], "context": inputs["context"]}

    def nearest_items(self, user_embedding: np.ndarray, k: int) -> list[tuple[str, float]]:
        """ANN search (faiss inner product over normalised item vectors)."""
        if self.item_embeddings is None:
            return []
        if self._ann is None:
            import faiss

            index = faiss.IndexHNSWFlat(self.item_embeddings.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = 128
            index.add(self.item_embeddings)
            self._ann = index
        q = np.asarray(user_embedding, dtype=np.float32).reshape(1, -1)
        q = q / max(float(np.linalg.norm(q)), 1e-8)
        scores, idx = self._ann.search(q, k + 2)  # type: ignore[attr-defined]
        out = []
        for s, i in zip(scores[0], idx[0], strict=True):
            item = self.vocab.item_id(int(i)) if i >= 0 else None
            if item is not None:
                out.append((item, float(s)))
        return out[:k]

    def most_similar_history(self, candidate: str, history: Sequence[str]) -> str | None:
        """The history item whose embedding is closest to the candidate's: the "because" of an explanation."""
        if self.item_embeddings is None or not history:
            return None
        c = self.vocab.index(candidate)
        hs = [h for h in dict.fromkeys(history) if self.vocab.index(h) >= 2]
        if c < 2 or not hs:
            return None
        sims = self.item_embeddings[self.vocab.indices(hs)] @ self.item_embeddings[c]
        return hs[int(np.argmax(sims))]


def scores_from_outputs(outputs: Mapping[str, np.ndarray], counts: Sequence[int]) -> list[np.ndarray]:
    """Per-request score vectors with the padding cut off."""
    scores = outputs["scores"]
    return [scores[i, :n] for i, n in enumerate(counts)]
