"""The answer-building array functions the ranker serves with and the evaluator measures with."""

from __future__ import annotations

import numpy as np
from scalerec_models import candidates as c
from scalerec_models.runtime import CF_SEEDS


def test_first_occurrences_keeps_order_with_or_without_a_scratch_array() -> None:
    positions = np.array([5, 3, 5, 0, 3, 9, 0], dtype=np.int64)
    assert c.first_occurrences(positions).tolist() == [0, 1, 3, 5]
    slot = np.full(20, 123, dtype=np.int64)  # dirty from an earlier call: must not matter
    assert c.first_occurrences(positions, slot).tolist() == [0, 1, 3, 5]
    assert c.first_occurrences(np.zeros(0, dtype=np.int64)).tolist() == []


def test_recent_seeds_are_the_latest_distinct_items_most_recent_first() -> None:
    history = np.array([1, 7, 2, 7, 0, 3], dtype=np.int64)  # oldest first; 0 is padding below `lowest`
    assert c.recent_seeds(history, c.first_occurrences, lowest=1).tolist() == [3, 7, 2, 1]
    long = np.arange(100, dtype=np.int64)
    assert c.recent_seeds(long, c.first_occurrences).tolist() == list(range(99, 99 - CF_SEEDS, -1))


def test_item_cf_scores_each_neighbour_by_its_best_seed_discounted_by_recency() -> None:
    neighbours = {"a": [("x", 0.9), ("y", 0.5)], "b": [("y", 0.8), ("z", 0.1), ("gone", 0.7)]}
    position = {"a": 0, "b": 1, "x": 2, "y": 3, "z": 4}
    pos, score = c.neighbour_matrix(neighbours, position, 5)
    assert pos[1].tolist() == [3, 4, -1]  # an item without a position is left out, the rest moves up
    got, s, seed = c.item_cf(pos, score, np.array([1, 0]), per_source=10, first=c.first_occurrences)
    # Seed b (most recent) counts fully, a at half: y 0.8 via b beats x 0.45 via a and y 0.25 via a.
    assert got.tolist() == [3, 2, 4]
    assert np.allclose(s, [0.8, 0.45, 0.1])
    assert seed.tolist() == [1, 0, 1]
    assert c.item_cf(pos, score, np.array([1, 0]), per_source=1, first=c.first_occurrences)[0].tolist() == [3]


def test_merged_keeps_each_offered_item_once_in_priority_order_up_to_the_limit() -> None:
    positions = np.array([4, 2, 4, 9, 2, 7, 1], dtype=np.int64)
    offer = np.array([True, True, True, False, True, True, True])
    keep = c.merged(positions, offer, limit=3, first=c.first_occurrences)
    assert positions[keep].tolist() == [4, 2, 7]


def test_rerank_caps_categories_keeps_exploration_slots_and_tops_up() -> None:
    order = np.arange(8)  # candidate indices, best first
    category = np.array([1, 1, 1, 1, 2, 2, 3, 1])
    assert c.rerank(order, category, k=4, cap=2) == [0, 1, 4, 5]
    fresh = np.array([False, False, False, False, False, False, False, True])
    assert c.rerank(order, category, k=4, cap=2, fresh=fresh, explore=1) == [0, 1, 4, 7]
    # Only one category: the cap cannot be met, so the answer is topped up from the best left.
    assert c.rerank(np.arange(5), np.ones(5, dtype=np.int64), k=4, cap=2) == [0, 1, 2, 3]
    # Exploration with no fresh candidate, more slots than candidates, nothing to rank.
    none_fresh = np.zeros(8, dtype=bool)
    assert c.rerank(order, category, k=4, cap=2, fresh=none_fresh, explore=2) == [0, 1, 4, 5]
    assert c.rerank(order[:3], category, k=10, cap=2) == [0, 1, 2]
    assert c.rerank(np.zeros(0, dtype=np.int64), category, k=10, cap=2, fresh=none_fresh, explore=1) == []
    assert c.per_category(10, 0.3) == 3 and c.per_category(10, 0.1) == 2 and c.per_category(10, 1) == 10


def test_category_codes_number_names_as_first_seen_and_group_the_unnamed() -> None:
    codes: dict[str, int] = {}
    got = [c.category_code(n, codes) for n in ("shoes", "", "hats", "shoes", "unknown")]
    assert got == [1, c.NO_CATEGORY, 2, 1, c.NO_CATEGORY]
