"""The request path's array functions against plain-Python statements of what they do.

``ServingModel.item_cf``, ``merge`` and ``rerank`` are written for speed (scratch arrays, one
sort and a bounded walk); these tests hold them to the obvious loop over the same inputs, on
random inputs with repeated items, blocked items, items the catalogue does not offer and ties.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scalerec_features import ITEM_FEATURE_LEN
from scalerec_models.data import FIRST_ITEM, ItemVocab
from scalerec_models.runtime import similarity_vectors
from scalerec_ranker.config import RankerSettings
from scalerec_ranker.items import ItemRow, ItemTable
from scalerec_ranker.serving import FRESH, Candidates, ServingModel

N_ITEMS = 60
CATEGORIES = ("a", "b", "c", "d")


def _model(rng: np.random.Generator) -> ServingModel:
    ids = [f"i{n}" for n in range(N_ITEMS)]
    rows = [
        ItemRow(i, (0,) * ITEM_FEATURE_LEN, bool(rng.random() < 0.85), i, CATEGORIES[int(rng.integers(4))]) for i in ids
    ]
    table = ItemTable.build(ItemVocab(ids), None, rows)
    width = 12
    nbr_pos = np.full((table.size, width), -1, dtype=np.int64)
    nbr_score = np.zeros((table.size, width), dtype=np.float32)
    for row in range(FIRST_ITEM, table.size):
        n = int(rng.integers(0, width + 1))
        nbr_pos[row, :n] = rng.choice(np.arange(FIRST_ITEM, table.size), n, replace=False)
        nbr_score[row, :n] = np.sort(np.round(rng.random(n), 1))[::-1]  # rounded: ties happen
    unit = rng.normal(size=(table.size, 8)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    model: Any = None  # the functions under test never touch the ModelVersion
    return ServingModel(model, table, nbr_pos, nbr_score, unit)


def _item_cf_reference(m: ServingModel, recent: np.ndarray, per: int) -> tuple[list[int], list[float], list[int]]:
    entries = []  # (score, order of appearance, position, seed)
    n = 0
    for i, seed in enumerate(int(s) for s in recent if s < len(m.neighbour_pos)):
        for j in range(min(per, m.neighbour_pos.shape[1])):
            pos = int(m.neighbour_pos[seed, j])
            if pos >= 0:
                entries.append((-float(np.float32(m.neighbour_score[seed, j]) / np.float32(1 + i)), n, pos, seed))
            n += 1
    out: dict[int, tuple[float, int]] = {}
    for score, _, pos, seed in sorted(entries):
        out.setdefault(pos, (-score, seed))
    best = list(out.items())[:per]
    return [p for p, _ in best], [s for _, (s, _) in best], [seed for _, (_, seed) in best]


def _merge_reference(m: ServingModel, parts: list[Any], blocked: np.ndarray, limit: int) -> list[tuple[Any, ...]]:
    seen: set[int] = set()
    out = []
    for source, pos, prior, because in parts:
        for j, p in enumerate(int(x) for x in pos):
            if p < FIRST_ITEM or not m.table.available[p] or p in set(blocked.tolist()) or p in seen:
                continue
            seen.add(p)
            out.append(
                (p, source, -1 if because is None else int(because[j]), 0.0 if prior is None else float(prior[j]))
            )
    return out[:limit]


def _rerank_reference(
    m: ServingModel, cands: Candidates, scores: np.ndarray, k: int, per_category: int, explore: int
) -> list[int]:
    order = sorted(range(len(cands)), key=lambda i: (-scores[i], i))
    fresh = [i for i in order if cands.source[i] == FRESH][:explore] if explore else []
    rest = [i for i in order if not (explore and cands.source[i] == FRESH)]
    count: dict[int, int] = {}
    picked = []
    for i in rest:
        c = int(m.table.category[cands.positions[i]])
        count[c] = count.get(c, 0) + 1
        if count[c] <= per_category:
            picked.append(i)
    out = (picked[: max(0, k - len(fresh))] + fresh)[:k]
    out += [i for i in order if i not in out][: k - len(out)]
    return out


def _explain_reference(
    m: ServingModel, picked: np.ndarray, history: np.ndarray, min_sim: float, preferred: np.ndarray
) -> list[int]:
    assert m.unit is not None
    out = []
    for p, seed in zip(picked.tolist(), preferred.tolist(), strict=True):
        sim = {h: float(m.unit[h] @ m.unit[p]) for h in history.tolist() if h >= FIRST_ITEM and h != p}
        if p < FIRST_ITEM or not sim:
            out.append(-1)
        elif seed in sim and sim[seed] >= min_sim:
            out.append(seed)
        else:
            best = max(sim, key=lambda h: (sim[h], -history.tolist().index(h)))  # ties: the earliest
            out.append(best if sim[best] >= min_sim else -1)
    return out


@pytest.mark.parametrize("seed", range(30))
def test_explain_names_the_preferred_seed_or_the_most_similar_history_item_above_the_threshold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = _model(rng)
    picked = rng.choice(np.arange(FIRST_ITEM - 1, m.table.size), int(rng.integers(1, 12)), replace=False)
    history = np.unique(rng.integers(FIRST_ITEM, m.table.size, int(rng.integers(0, 20))))
    preferred = np.where(rng.random(len(picked)) < 0.5, rng.integers(FIRST_ITEM, m.table.size, len(picked)), -1)
    min_sim = float(rng.uniform(-0.5, 0.5))
    got = m.explain(picked, history, min_sim, preferred).tolist()
    assert got == _explain_reference(m, picked, history, min_sim, preferred)


def test_a_direction_every_item_shares_does_not_make_unrelated_items_similar() -> None:
    """Retrieval embeddings = a large shared direction (popularity) + what sets a category apart. With the plain
    cosine every pair looks alike and "because you viewed" names anything; centred, only a category's items do."""
    rng = np.random.default_rng(0)
    dim, per = 16, 25
    centres = rng.normal(size=(len(CATEGORIES), dim))
    shared = 6 * rng.normal(size=dim)
    emb = np.concatenate([c + shared + 0.3 * rng.normal(size=(per, dim)) for c in centres]).astype(np.float32)
    emb = np.concatenate([np.full((FIRST_ITEM, dim), 50, np.float32), emb])  # padding rows: not items
    category = np.repeat(np.arange(len(CATEGORIES)), per)
    same = category[:, None] == category[None, :]
    other = ~same
    plain = emb[FIRST_ITEM:] / np.linalg.norm(emb[FIRST_ITEM:], axis=1, keepdims=True)
    assert np.median((plain @ plain.T)[other]) > 0.8  # the trap: unrelated items look alike
    unit = similarity_vectors(emb)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-5)
    sims = unit[FIRST_ITEM:] @ unit[FIRST_ITEM:].T
    assert sims[other].max() < 0.7 <= np.percentile(sims[same & ~np.eye(len(sims), dtype=bool)], 5)
    # Through the ranker's explanation: at the default threshold, an item is explained only by its own kind.
    ids = [f"i{n}" for n in range(len(category))]
    rows = [ItemRow(i, (0,) * ITEM_FEATURE_LEN, True, i, CATEGORIES[c]) for i, c in zip(ids, category, strict=True)]
    table = ItemTable.build(ItemVocab(ids), None, rows)
    m = ServingModel(None, table, np.zeros((table.size, 0), np.int64), np.zeros((table.size, 0), np.float32), unit)  # type: ignore[arg-type]
    threshold = RankerSettings.model_fields["explain_min_similarity"].default
    history = np.array([FIRST_ITEM + 3, FIRST_ITEM + per + 7])  # one item of the first two categories each
    picked = np.arange(FIRST_ITEM, table.size)
    because = m.explain(picked, history, threshold)
    cat_of = table.categories
    for p, b in zip(picked.tolist(), because.tolist(), strict=True):
        if cat_of[p] in {cat_of[h] for h in history.tolist()} and p not in history:
            assert b >= 0 and cat_of[b] == cat_of[p], (p, b)
        elif p not in history:
            assert b == -1, (p, b)


@pytest.mark.parametrize("seed", range(40))
def test_item_cf_merge_and_rerank_do_what_the_plain_loops_do(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = _model(rng)
    size = m.table.size

    recent = rng.integers(0, size + 3, int(rng.integers(0, 12)))
    per = int(rng.integers(1, 15))
    pos, score, seeds = m.item_cf(recent, per)
    ref_pos, ref_score, ref_seeds = _item_cf_reference(m, recent, per)
    assert pos.tolist() == ref_pos and seeds.tolist() == ref_seeds
    assert np.allclose(score, ref_score)

    parts: list[Any] = []
    for source in range(4):
        n = int(rng.integers(0, 40))
        prior = rng.random(n).astype(np.float32) if source < 3 and rng.random() < 0.7 else None
        because = rng.integers(-1, size, n) if source == 1 else None
        parts.append((source, rng.integers(-1, size, n), prior, because))
    blocked = rng.integers(-2, size, int(rng.integers(0, 8)))
    limit = int(rng.integers(1, 80))
    cands = m.merge(parts, blocked, limit)
    got = list(
        zip(cands.positions.tolist(), cands.source.tolist(), cands.because.tolist(), cands.prior.tolist(), strict=True)
    )
    assert got == _merge_reference(m, parts, blocked, limit)  # prior: the same float32 values

    if len(cands):
        scores = np.round(rng.random(len(cands)), 1).astype(np.float32)  # ties broken by candidate order
        k = int(rng.integers(1, 15))
        explore = int(rng.integers(0, k + 1))
        per_category = int(rng.integers(1, 4))
        picked = m.rerank(cands, scores, k, per_category, explore)
        assert picked.tolist() == _rerank_reference(m, cands, scores, k, per_category, explore)
        assert len(set(picked.tolist())) == len(picked) == min(k, len(cands))


def test_merge_skips_what_the_catalogue_does_not_offer_and_blocked_items_even_when_repeated() -> None:
    m = _model(np.random.default_rng(0))
    m.table.available[:] = False
    m.table.available[[5, 6, 7]] = True
    pos = np.array([7, 5, 5, 9, 6, 7, -1, 1], dtype=np.int64)
    cands = m.merge([(0, pos, None, None)], np.array([6, 6, -1]), 10)
    assert cands.positions.tolist() == [7, 5]
    assert m._mark is not None and not m._mark.any()  # the scratch is left clean for the next request


def _encoder(indices: np.ndarray, features: np.ndarray) -> np.ndarray:
    """A pure function of an item's index and content, in the shape of a candidate encoder's output."""
    return np.stack([indices, features.sum(1), features[:, 0], np.ones(len(indices))], 1).astype(np.float32)


def test_candidate_vectors_track_every_change_and_are_dropped_past_their_budget() -> None:
    """(The version's real encoder in service: tests/unit/services/test_ranker.py.)"""
    ids = [f"i{n}" for n in range(10)]
    rows = [ItemRow(i, (n % 5,) * ITEM_FEATURE_LEN, True, i, "a") for n, i in enumerate(ids)]
    table = ItemTable.build(ItemVocab(ids), None, rows)
    assert table.size == FIRST_ITEM + 10
    assert table.attach_encoder(_encoder, max_bytes=20 * 4 * 4)  # room for 20 rows of 4 floats
    assert table.vectors is not None
    every = np.arange(table.size)
    assert (table.vectors[every] == _encoder(table.model_index[every], table.features[every])).all()
    # A changed item and new ones (past the arrays' first capacity of 16) get their vectors at once.
    table.apply([ItemRow("i3", (9,) * ITEM_FEATURE_LEN, True, "i3", "a")])
    table.apply([ItemRow(f"new{n}", (n,) * ITEM_FEATURE_LEN, True, "", "b") for n in range(8)])
    assert table.size == 20 and table.vectors is not None
    every = np.arange(table.size)
    assert (table.vectors[every] == _encoder(table.model_index[every], table.features[every])).all()
    assert table.vectors[table.position["i3"], 1] == 9 * ITEM_FEATURE_LEN
    # One item more than the budget holds: no vectors at all (scored whole), and the table goes on.
    table.apply([ItemRow("one-too-many", (1,) * ITEM_FEATURE_LEN, True, "", "b")])
    assert table.vectors is None and table.size == 21
    table.apply([ItemRow("i4", (2,) * ITEM_FEATURE_LEN, False, "i4", "a")])
    assert not table.available[table.position["i4"]]
    # A budget the table does not fit in at all: nothing attached.
    assert not ItemTable.build(ItemVocab(ids), None, rows).attach_encoder(_encoder, max_bytes=4 * 4 * 4)
