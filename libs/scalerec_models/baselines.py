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
    similarities built on few co-occurrences; ``idf`` weights each user by
    log(items / the user's item count), so heavy users — who co-rate almost
    everything — count less (the TF-IDF weighting of the usual ItemKNN grid).
    Similarities are computed a block of items at a time, so memory is
    ``block * n_items`` however large the catalogue.
    """

    name = "item-cf"

    def __init__(self, k: int | None = 100, shrink: float = 10.0, idf: bool = False, block: int = 2048) -> None:
        self.k, self.shrink, self.idf, self.block = k, shrink, idf, block
        self.sim: sparse.csr_matrix | None = None
        self.n_items = 0

    def fit(self, histories: Sequence[np.ndarray], n_items: int) -> ItemKNN:
        """Fit in place (and return self), as every baseline does: callers may ignore the return value."""
        fitted = self.fit_neighbours(histories, n_items, [self.k])[self.k]
        self.sim, self.n_items = fitted.sim, fitted.n_items
        return self

    def fit_neighbours(
        self, histories: Sequence[np.ndarray], n_items: int, ks: Sequence[int | None]
    ) -> dict[int | None, ItemKNN]:
        """One fitted model per neighbour count in ``ks`` from a single similarity pass (a cheap k grid)."""
        x = user_item_matrix(histories, n_items)
        if self.idf:
            per_user = np.asarray(x.sum(1)).ravel()
            catalogue = max(int((np.asarray(x.sum(0)).ravel() > 0).sum()), 1)
            weight = np.log(catalogue / np.maximum(per_user, 1.0)).astype(np.float32)
            x = sparse.diags(weight) @ x
        xc = x.tocsc().astype(np.float32)
        xt = xc.T.tocsr()
        norms = np.sqrt(np.asarray(xc.multiply(xc).sum(0)).ravel())
        top = max((k for k in ks if k is not None and k < n_items), default=0)
        keep_all = any(k is None or k >= n_items for k in ks)
        blocks: dict[int | None, list[sparse.csr_matrix]] = {k: [] for k in ks}
        for s in range(0, n_items, self.block):
            e = min(n_items, s + self.block)
            # sparse [V, U] @ dense [U, b]: cost nnz * b, no sparse-sparse product (slow when items co-occur a lot).
            co = np.asarray(xt @ xc[:, s:e].toarray()).T  # [b, V] (weighted) co-occurrence
            sim = co / (norms[s:e, None] * norms[None, :] + self.shrink + 1e-9)
            sim[np.arange(e - s), np.arange(s, e)] = 0.0
            if keep_all:
                dense = sparse.csr_matrix(sim.astype(np.float32))
            if top:
                # The top-``top`` neighbours, best first: every smaller k is a prefix of them.
                idx = np.argpartition(-sim, top - 1, axis=1)[:, :top]
                vals = np.take_along_axis(sim, idx, axis=1)
                order = np.argsort(-vals, axis=1, kind="stable")
                idx, vals = np.take_along_axis(idx, order, 1), np.take_along_axis(vals, order, 1).astype(np.float32)
            for k in ks:
                if k is None or k >= n_items:
                    blocks[k].append(dense)
                else:
                    indptr = np.arange(0, (e - s) * k + 1, k)
                    part = (vals[:, :k].ravel(), idx[:, :k].ravel(), indptr)
                    blocks[k].append(sparse.csr_matrix(part, shape=(e - s, n_items)))
        out = {}
        for k in ks:
            model = ItemKNN(k, self.shrink, self.idf, self.block)
            model.sim = sparse.vstack(blocks[k]).tocsr() if blocks[k] else sparse.csr_matrix((0, 0))
            model.n_items = n_items
            out[k] = model
        return out

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
