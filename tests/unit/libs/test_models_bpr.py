"""BPR-MF (``scalerec_models.bpr``, implicit's SGD): learns taste, reproducible, early-stopped on validation."""

from __future__ import annotations

import numpy as np
from scalerec_models.bpr import BPRModel
from scalerec_models.data import FIRST_ITEM

N_ITEMS = FIRST_ITEM + 40


def _two_tastes(users: int = 60, seed: int = 0) -> list[np.ndarray]:
    """Even users like items 2..21, odd users items 22..41: 8 random items each."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(users):
        start = FIRST_ITEM + (20 if u % 2 else 0)
        out.append(rng.choice(np.arange(start, start + 20), 8, replace=False))
    return out


def test_learns_which_half_of_the_catalogue_a_user_likes() -> None:
    hist = _two_tastes()
    bpr = BPRModel(N_ITEMS, dim=8, lr=0.05, reg=0.01, seed=0)
    bpr.fit(hist, epochs=60)
    scores = bpr.scores(np.arange(len(hist)))
    assert np.isneginf(scores[:, :FIRST_ITEM]).all()
    own = [scores[u, FIRST_ITEM + (20 if u % 2 else 0) :][:20].mean() for u in range(len(hist))]
    other = [scores[u, FIRST_ITEM + (0 if u % 2 else 20) :][:20].mean() for u in range(len(hist))]
    assert np.mean(np.array(own) > np.array(other)) > 0.9


def test_same_seed_same_factors_to_the_last_digit() -> None:
    hist = _two_tastes()
    runs = []
    for _ in range(2):
        bpr = BPRModel(N_ITEMS, dim=8, seed=3)
        bpr.fit(hist, epochs=5)
        runs.append(bpr.scores(np.arange(len(hist))))
    assert np.array_equal(runs[0], runs[1])
    other = BPRModel(N_ITEMS, dim=8, seed=4)
    other.fit(hist, epochs=5)
    assert not np.array_equal(runs[0], other.scores(np.arange(len(hist))))


def test_early_stopping_keeps_the_best_checked_epoch() -> None:
    hist = _two_tastes()
    script = iter([0.1, 0.3, 0.2, 0.25, 0.2, 0.9])
    seen: list[np.ndarray] = []

    def validate(model: BPRModel) -> float:
        seen.append(model.scores(np.arange(3)))
        return next(script)

    bpr = BPRModel(N_ITEMS, dim=8, seed=0)
    best_epoch, best = bpr.fit(hist, epochs=30, validate=validate, patience=3, every=2)
    # Checked at epochs 2, 4, 6, 8, 10: best at 4, then three checks without a gain stop it.
    assert (best_epoch, best) == (4, 0.3)
    assert len(seen) == 5
    assert np.array_equal(bpr.scores(np.arange(3)), seen[1])
