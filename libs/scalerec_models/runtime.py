"""A promoted model version as the ranker serves it: the bundle plus what serving adds (no torch).

:class:`~scalerec_models.bundle.ModelBundle` encodes the ONNX inputs; this adds
what the ranker needs around scoring: the ANN index over item embeddings
(retrieval candidates), the item-item CF neighbours (``item_neighbors.json``,
written by the trainer), the model card, and the similarity vectors behind explanations and
similar items.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalerec_models import repository as repo
from scalerec_models.ann import AnnIndex, top_rows
from scalerec_models.bundle import ModelBundle
from scalerec_models.data import FIRST_ITEM

NEIGHBORS_FILE = "item_neighbors.json"
# The item-CF candidate generator, one definition for its users: the trainer writes NEIGHBOURS_PER_ITEM
# neighbours per item into NEIGHBORS_FILE; the ranker and the evaluator's served lists seed the lookup
# with the CF_SEEDS most recent distinct items of a history (scalerec_models.candidates); candidate_recall
# (scalerec_models.benchmark) measures that same generator offline.
CF_SEEDS = 10
NEIGHBOURS_PER_ITEM = 50


@dataclass
class ModelVersion:
    version: int
    bundle: ModelBundle
    neighbors: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    unit_embeddings: np.ndarray | None = None  # similarity_vectors(): explanations, similar items
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
            unit = similarity_vectors(emb)
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

    def similar_items(self, item_id: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` items whose embedding is most similar to ``item_id``'s (cosine of
        :func:`similarity_vectors`), best first; empty for an item the version does not know."""
        unit, vocab = self.unit_embeddings, self.bundle.vocab
        i = vocab.index(item_id)
        if unit is None or i < FIRST_ITEM or i >= len(unit):
            return []
        sims = unit[FIRST_ITEM:] @ unit[i]
        sims[i - FIRST_ITEM] = -np.inf  # not similar to itself
        take = min(k, len(sims) - 1)
        if take <= 0:
            return []
        out = []
        for row in top_rows(sims, take).tolist():
            other = vocab.item_id(row + FIRST_ITEM)
            if other is not None:
                out.append((other, float(sims[row])))
        return out


def similarity_vectors(embeddings: np.ndarray) -> np.ndarray:
    """Item embeddings for item-to-item similarity: centred on the items' mean, then L2-normalised.

    A retrieval model's item embeddings share one large direction (what makes an item likely for
    anyone: popularity), so their plain cosines are high for every pair: on the demo's models the
    median between items of *different* categories was 0.60-0.66, and a "because you viewed" threshold
    of 0.6 let most unrelated pairs through. Without the mean, those pairs sit near 0 (99th percentile
    0.38-0.43) while items of the same category keep a median of 0.50-0.56 (docs/benchmarks.md,
    "Explanations"). Rows below FIRST_ITEM (padding, unknown) are not items: they are not part of the
    mean and stay as they were, normalised.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    centred = emb.copy()
    if len(emb) > FIRST_ITEM:
        centred[FIRST_ITEM:] -= emb[FIRST_ITEM:].mean(axis=0)
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-8)
