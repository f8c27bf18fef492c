"""A promoted model version as the ranker serves it: the bundle plus what serving adds (no torch).

:class:`~scalerec_models.bundle.ModelBundle` encodes the ONNX inputs; this adds
what the ranker needs around scoring: the ANN index over item embeddings
(retrieval candidates), the item-item CF neighbours (``item_neighbors.json``,
written by the trainer), the model card, and the explanation helper that names
the history item closest to a recommendation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalerec_models import repository as repo
from scalerec_models.ann import AnnIndex
from scalerec_models.bundle import ModelBundle
from scalerec_models.data import FIRST_ITEM

NEIGHBORS_FILE = "item_neighbors.json"
# The item-CF candidate generator, one definition for its three users: the trainer writes
# NEIGHBOURS_PER_ITEM neighbours per item into NEIGHBORS_FILE, the ranker seeds the lookup with the
# CF_SEEDS most recent distinct items of a history, and candidate_recall (scalerec_models.benchmark)
# measures that same generator offline.
CF_SEEDS = 10
NEIGHBOURS_PER_ITEM = 50


@dataclass
class ModelVersion:
    version: int
    bundle: ModelBundle
    neighbors: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    unit_embeddings: np.ndarray | None = None  # L2-normalised rows, for explanations
    ann: AnnIndex | None = None

    @classmethod
    def load(cls, repository: Path, version: int, model: str = repo.RANKER_MODEL) -> ModelVersion:
        folder = Path(repository) / model / str(version)
        if not (folder / repo.MODEL_FILE).exists():
            raise FileNotFoundError(f"{model} version {version}: no {repo.MODEL_FILE} in {folder}")
        bundle = ModelBundle(folder)
        neighbors: dict[str, list[tuple[str, float]]] = {}
        if (folder / NEIGHBORS_FILE).exists():
            raw = json.loads((folder / NEIGHBORS_FILE).read_text())
            neighbors = {k: [(str(a), float(b)) for a, b in v] for k, v in raw.items()}
        unit, ann = None, None
        if bundle.item_embeddings is not None and len(bundle.item_embeddings) > FIRST_ITEM:
            emb = np.asarray(bundle.item_embeddings, dtype=np.float32)
            unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-8)
            ann = AnnIndex(emb.shape[1]).build(emb)
        card = repo.read_card(Path(repository), model, version)
        return cls(version, bundle, neighbors, card, unit, ann)

    @property
    def history_len(self) -> int:
        return self.bundle.history_len

    def encode(
        self,
        histories: Sequence[Sequence[str]],
        contexts: Sequence[Sequence[int]],
        candidates: Sequence[Sequence[str]],
        candidate_features: Sequence[Sequence[Sequence[int]] | None] | None = None,
    ) -> dict[str, np.ndarray]:
        return self.bundle.ranker_inputs(histories, contexts, candidates, candidate_features)

    def encode_user(
        self, histories: Sequence[Sequence[str]], contexts: Sequence[Sequence[int]]
    ) -> dict[str, np.ndarray]:
        return self.bundle.user_tower_inputs(histories, contexts)

    def nearest_items(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Retrieval: the items whose embedding has the largest inner product with ``query``."""
        if self.ann is None:
            return []
        scores, idx = self.ann.search(np.asarray(query, dtype=np.float32).reshape(1, -1), k)
        out = []
        for s, i in zip(scores[0], idx[0], strict=True):
            item = self.bundle.vocab.item_id(int(i)) if i >= 0 else None
            if item is not None:
                out.append((item, float(s)))
        return out

    def item_vector(self, item_id: str) -> np.ndarray | None:
        i = self.bundle.vocab.index(item_id)
        if self.bundle.item_embeddings is None or i < FIRST_ITEM or i >= len(self.bundle.item_embeddings):
            return None
        return np.asarray(self.bundle.item_embeddings[i], dtype=np.float32)

    def most_similar_history(self, candidate: str, history: Sequence[str], min_similarity: float = 0.3) -> str | None:
        """The history item whose embedding is closest to the candidate's: the "because" of an explanation.

        None when even the closest is not similar (cosine below ``min_similarity``): an unrelated
        "because you viewed ..." is worse than no reason.
        """
        if self.unit_embeddings is None or not history:
            return None
        vocab = self.bundle.vocab
        c = vocab.index(candidate)
        hs = [h for h in dict.fromkeys(history) if vocab.index(h) >= FIRST_ITEM and h != candidate]
        if c < FIRST_ITEM or not hs:
            return None
        sims = self.unit_embeddings[vocab.indices(hs)] @ self.unit_embeddings[c]
        best = int(np.argmax(sims))
        return hs[best] if float(sims[best]) >= min_similarity else None
