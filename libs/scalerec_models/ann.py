"""Approximate nearest-neighbour search over item embeddings (faiss; no torch).

Inner-product search, since the two-tower model scores by dot product.  Small
catalogues use an exact flat index; larger ones an HNSW graph (no training
pass, good recall, memory ~ (dim + 2*M) floats per item).

A flat index is searched with one matrix product and a partial sort in numpy: for the
one-query searches of the request path that is half of faiss's cost (faiss keeps its
per-call set-up and a heap per query, made for batches), with the same exact results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from scalerec_models.data import FIRST_ITEM


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest of 1-D ``scores``, best first, equal scores in index order (``k`` < len).

    A partial sort (``argpartition``) then a stable sort of the ``k``: the partition leaves its ``k`` in no
    fixed order, so they are put in index order first, or equal scores would come out in whatever order it
    left them."""
    top = np.argpartition(-scores, k - 1)[:k]
    top.sort()
    return top[np.argsort(-scores[top], kind="stable")]


class AnnIndex:
    """Top-k items by inner product with a query vector; results are item indices (rows of the table)."""

    def __init__(self, dim: int, kind: str = "auto", hnsw_m: int = 32, ef_search: int = 128) -> None:
        if kind not in ("auto", "flat", "hnsw"):
            raise ValueError(f"unknown index kind {kind!r}; expected auto, flat or hnsw")
        self.dim, self.kind, self.hnsw_m, self.ef_search = dim, kind, hnsw_m, ef_search
        self._index: Any = None  # a faiss index: flat or HNSW, chosen at build time
        self._ids = np.zeros(0, dtype=np.int64)
        self._flat: np.ndarray | None = None  # [n, dim] rows of a flat index, searched in numpy

    def __len__(self) -> int:
        return len(self._ids)

    def build(self, embeddings: np.ndarray, ids: np.ndarray | None = None, flat_below: int = 200_000) -> AnnIndex:
        """Index ``embeddings`` [V, D]; by default rows are item indices and pad/unknown rows are skipped."""
        import faiss

        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"embeddings must be [n, {self.dim}], got {emb.shape}")
        if ids is None:
            ids = np.arange(FIRST_ITEM, len(emb), dtype=np.int64)
            emb = emb[FIRST_ITEM:]
        kind = self.kind if self.kind != "auto" else ("flat" if len(emb) < flat_below else "hnsw")
        index: Any
        if kind == "flat":
            index = faiss.IndexFlatIP(self.dim)
        else:
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = self.ef_search
        index.add(emb)
        self._index, self._ids, self.kind = index, np.asarray(ids, dtype=np.int64), kind
        self._flat = emb if kind == "flat" else None
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores [B, k], item indices [B, k]); index -1 / score -inf where fewer than k items exist."""
        if self._index is None:
            raise RuntimeError("AnnIndex.search before build/load")
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if self._flat is not None:
            return self._search_flat(q, k)
        scores, rows = self._index.search(q, k)
        items = np.where(rows >= 0, self._ids[np.clip(rows, 0, None)], -1)
        return np.where(rows >= 0, scores, -np.inf).astype(np.float32), items

    def _search_flat(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by inner product, best first, ties in row order; as faiss's flat index answers
        except where equal scores straddle the k-th place (which of those rows make the cut is not fixed)."""
        assert self._flat is not None
        n = len(self._flat)
        take = min(k, n)
        if len(q) == 1 and take < n:
            # The request path's one query: the same steps on 1-D arrays, without take_along_axis's index
            # building (half the cost of the search at a few hundred results).
            sims1 = (q @ self._flat.T)[0]
            rows1 = top_rows(sims1, take)
            return self._padded(sims1[rows1][None].astype(np.float32, copy=False), self._ids[rows1][None], k)
        sims = q @ self._flat.T  # [B, n]
        if take < n:
            top = np.argpartition(-sims, take - 1, axis=1)[:, :take]
            top.sort(axis=1)  # row order, so that the stable sort below breaks ties by row
        else:
            top = np.broadcast_to(np.arange(n), (len(q), n))
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        rows = np.take_along_axis(top, order, axis=1)
        scores = np.take_along_axis(top_sims, order, axis=1).astype(np.float32, copy=False)
        return self._padded(scores, self._ids[rows], k)

    @staticmethod
    def _padded(scores: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if scores.shape[1] < k:  # fewer items than asked for: pad as faiss does
            pad = k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            items = np.pad(items, ((0, 0), (0, pad)), constant_values=-1)
        return scores, items

    def save(self, path: str | Path) -> None:
        import faiss

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(path / "index.faiss"))
        np.save(path / "ids.npy", self._ids)
        (path / "ann.json").write_text(
            json.dumps({"dim": self.dim, "kind": self.kind, "hnsw_m": self.hnsw_m, "ef_search": self.ef_search})
        )

    @classmethod
    def load(cls, path: str | Path) -> AnnIndex:
        import faiss

        path = Path(path)
        meta = json.loads((path / "ann.json").read_text())
        ann = cls(meta["dim"], meta["kind"], meta["hnsw_m"], meta["ef_search"])
        ann._index = faiss.read_index(str(path / "index.faiss"))
        if meta["kind"] == "hnsw":
            ann._index.hnsw.efSearch = meta["ef_search"]
        ann._ids = np.load(path / "ids.npy")
        if meta["kind"] == "flat":
            ann._flat = ann._index.reconstruct_n(0, ann._index.ntotal)
        return ann
