"""BPR-MF, the matrix-factorisation baseline of ``scalerec eval-dataset``, trained by ``implicit``.

``implicit`` (PyPI, the ``benchmark`` extra) is the well-kept implementation:
SGD in C++, negatives checked against the user's own items.  Our earlier torch
version (Adam, uniform negatives) peaked at validation NDCG@10 0.026 on
MovieLens-small where this one reaches about 0.037 (docs/models.md).

Deterministic: one thread (implicit's multi-threaded SGD is lock-free, so its
result depends on thread timing) and one seeded numpy generator for the whole
run.  Training goes one epoch per ``fit`` call, which continues from the
current factors, so validation can stop it early and keep the best epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from scalerec_models.baselines import user_item_matrix
from scalerec_models.data import FIRST_ITEM


class BPRModel:
    """``fit`` on per-user item lists (the row is the user), ``scores`` for some of those users."""

    def __init__(self, n_items: int, dim: int = 64, reg: float = 0.01, lr: float = 0.01, seed: int = 0) -> None:
        self.n_items, self.dim, self.reg, self.lr, self.seed = n_items, dim, reg, lr, seed
        self.model: Any = None

    def fit(
        self,
        histories: Sequence[np.ndarray],
        epochs: int,
        validate: Callable[[BPRModel], float] | None = None,
        patience: int = 3,
        every: int = 5,
    ) -> tuple[int, float]:
        """Up to ``epochs`` epochs; with ``validate`` (run every ``every`` epochs), stop after ``patience``
        checks without a gain and keep the best epoch's factors.  -> (best epoch, its validation score)."""
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        x = user_item_matrix(histories, self.n_items)
        # One generator for the run: every fit() call draws its epoch's samples from where the last one stopped.
        self.model = BayesianPersonalizedRanking(
            factors=self.dim,
            learning_rate=self.lr,
            regularization=self.reg,
            iterations=1,
            num_threads=1,
            random_state=np.random.default_rng(self.seed),
        )
        best, best_epoch, best_state, bad = -1.0, epochs, None, 0
        for epoch in range(1, epochs + 1):
            self.model.fit(x, show_progress=False)
            if validate is None or (epoch % every and epoch != epochs):
                continue
            score = validate(self)
            if score > best:
                best, best_epoch, bad = score, epoch, 0
                best_state = (self.model.user_factors.copy(), self.model.item_factors.copy())
            else:
                bad += 1
                if bad >= patience:
                    break
        if best_state is not None:
            self.model.user_factors, self.model.item_factors = best_state
        return best_epoch, best

    def scores(self, users: np.ndarray) -> np.ndarray:
        """[len(users), n_items]: inner products (the last factor is implicit's item bias); pad/unknown -inf."""
        assert self.model is not None, "fit first"
        sc = self.model.user_factors[np.asarray(users, dtype=np.int64)] @ self.model.item_factors.T
        sc[:, :FIRST_ITEM] = -np.inf
        return np.asarray(sc, dtype=np.float32)
