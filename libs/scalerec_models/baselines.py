"""Baselines that always exist (numpy/scipy only): popularity, item-item CF, user-based CF.

They are the ranker's fallback when a model is missing or a backend is down,
and the bar every learned model must clear.  All share one small interface:
``fit(histories, n_items)`` on per-user item-index arrays, then
``score(histories) -> [len(histories), n_items]`` for any histories (a known
user's or a brand-new session's), so serving and offline evaluation call the
same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse

from scalerec_models.data import FIRST_ITEM


def user_item_matrix(histories: Sequence[np.ndarray], n_items: int) -> sparse.csr_matrix:
    """Binary [users, items] matrix; repeated interactions count once (implicit feedback)."""
    rows = np.concatenate([np.full(len(h), u, dtype=np.int64) for u, h in enumerate(histories)] or [np.zeros(0, int)])
    cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories] or [np.zeros(0, int)])
    m = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(histories), n_items))
    m.data[:] = 1.0
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


class Popularity:
    """Most-interacted items first; the same list for everyone."""

    name = "popularity"

    def __init__(self) -> None:
        self.counts = np.zeros(0)

    def fit(self, histories: Sequence[np.ndarray], n_items: int) -> Popularity:
        self.counts = np.asarray(user_item_matrix(histories, n_items).sum(0)).ravel().astype(np.float32)
        self.counts[:FIRST_ITEM] = -np.inf
        return self

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))


class ItemKNN:
    """Item-item CF: cosine similarity of item columns, top-``k`` neighbours per item.

    score(u, j) = sum over the user's items i of sim(i, j).  ``shrink`` damps
    similarities built on few co-occurrences.  Similarities are computed a block
    of items at a time, so memory is ``block * n_items`` however large the catalogue.
    """

    name = "item-cf"

    def __init__(self, k: int | None = 100, shrink: float = 10.0, block: int = 2048) -> None:
        self.k, self.shrink, self.block = k, shrink, block
        self.sim: sparse.csr_matrix | None = None
        self.n_items = 0

    def fit(self, histories: Sequence[np.ndarray], n_items: int) -> ItemKNN:
        x = user_item_matrix(histories, n_items).tocsc().astype(np.float32)
        xt = x.T.tocsr()
        norms = np.sqrt(np.asarray(x.sum(0)).ravel())
        blocks = []
        for s in range(0, n_items, self.block):
            e = min(n_items, s + self.block)
            # sparse [V, U] @ dense [U, b]: cost nnz * b, no sparse-sparse product (slow when items co-occur a lot).
            co = np.asarray(xt @ x[:, s:e].toarray()).T  # [b, V] co-occurrence counts
            sim = co / (norms[s:e, None] * norms[None, :] + self.shrink + 1e-9)
            sim[np.arange(e - s), np.arange(s, e)] = 0.0
            if self.k is not None and self.k < n_items:
                top = np.argpartition(-sim, self.k - 1, axis=1)[:, : self.k]
                vals = np.take_along_axis(sim, top, axis=1).astype(np.float32)
                indptr = np.arange(0, (e - s) * self.k + 1, self.k)
                blocks.append(sparse.csr_matrix((vals.ravel(), top.ravel(), indptr), shape=(e - s, n_items)))
            else:
                blocks.append(sparse.csr_matrix(sim.astype(np.float32)))
        self.sim = sparse.vstack(blocks).tocsr() if blocks else sparse.csr_matrix((0, 0))
        self.n_items = n_items
        return self

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        assert self.sim is not None, "fit first"
        out = np.asarray((user_item_matrix(histories, self.n_items) @ self.sim).todense(), dtype=np.float32)
        out[:, :FIRST_ITEM] = -np.inf
        return out


class UserKNN:
    """User-based CF: cosine between users, the ``k`` most similar users vote with their items."""

    name = "user-cf"

    def __init__(self, k: int = 50) -> None:
        self.k = k
        self.x: sparse.csr_matrix | None = None
        self.n_items = 0

    def fit(self, histories: Sequence[np.ndarray], n_items: int) -> UserKNN:
        self.x = user_item_matrix(histories, n_items)
        self.norms = np.sqrt(np.asarray(self.x.sum(1)).ravel()) + 1e-9
        self.n_items = n_items
        return self

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        assert self.x is not None, "fit first"
        q = user_item_matrix(histories, self.n_items)
        qn = np.sqrt(np.asarray(q.sum(1)).ravel()) + 1e-9
        sim = np.asarray((q @ self.x.T).todense()) / (qn[:, None] * self.norms[None, :])
        # A user does not vote for themself (the same history appearing in the training matrix).
        sim[sim >= 1.0 - 1e-6] = 0.0
        k = min(self.k, sim.shape[1])
        if k < sim.shape[1]:
            cut = np.argpartition(-sim, k, axis=1)[:, k:]
            np.put_along_axis(sim, cut, 0.0, axis=1)
        out = np.asarray((sparse.csr_matrix(sim) @ self.x).todense(), dtype=np.float32)
        out[:, :FIRST_ITEM] = -np.inf
        return out
