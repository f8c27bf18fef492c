"""The synthetic shop must carry the structure the platform's models are meant to find.

If these fail, the demo and the end-to-end tests stop telling a good model from a bad one: the data
would be either unlearnable (models tie with popularity) or invalid (the collector would reject it).
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scalerec_events.models import Event, EventType, Item
from scalerec_features.definitions import DEVICES, tokenize
from scalerec_synthetic import (
    EVENT_NAMESPACE,
    Shop,
    ShopConfig,
    generate_shop,
    item_id,
    item_index,
    shop_summary,
    user_id,
    user_index,
)

END = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SMALL = ShopConfig(users=600, items=300, categories=10, days=14, events_per_user=25, seed=11, end=END)


@pytest.fixture(scope="module")
def shop() -> Shop:
    return generate_shop(SMALL)


def _views_by_session(shop: Shop) -> dict[str, list[Event]]:
    sessions: dict[str, list[Event]] = {}
    for e in shop.events:
        if e.type is EventType.VIEW:
            sessions.setdefault(e.context.session_id or "", []).append(e)
    return sessions


def test_same_seed_same_shop_and_another_seed_another() -> None:
    config = ShopConfig(users=80, items=60, categories=6, days=5, seed=3, end=END)
    first, again = generate_shop(config), generate_shop(config)
    assert first.events == again.events
    assert first.items == again.items
    other = generate_shop(ShopConfig(users=80, items=60, categories=6, days=5, seed=4, end=END))
    assert [e.item_id for e in other.events] != [e.item_id for e in first.events]
    assert not {e.event_id for e in other.events} & {e.event_id for e in first.events}


@pytest.mark.parametrize(
    "end", [datetime(2026, 11, 3, 3, 17, 41, 123000, tzinfo=UTC), datetime(2025, 6, 4, 21, 5, tzinfo=UTC)]
)
def test_a_window_ending_at_another_time_is_the_same_shop_moved(end: datetime) -> None:
    """Where the window ends (the demo's: a minute before it runs) moves the shop, it does not redraw it, so
    the demo's holdout holds the same events at whatever hour and weekday it runs."""
    config = ShopConfig(users=80, items=60, categories=6, days=5, seed=3, end=END)
    there = generate_shop(config)
    moved = generate_shop(ShopConfig(users=80, items=60, categories=6, days=5, seed=3, end=end))
    shift = end - END
    assert len(moved.events) == len(there.events)
    for a, b in zip(there.events, moved.events, strict=True):
        assert (b.user_id, b.item_id, b.type, b.value, b.context) == (a.user_id, a.item_id, a.type, a.value, a.context)
        assert b.timestamp - a.timestamp == shift
    assert [(i.item_id, i.title, i.price) for i in moved.items] == [(i.item_id, i.title, i.price) for i in there.items]
    assert all(
        abs((b.created_at - a.created_at) - shift) < timedelta(milliseconds=1)
        for a, b in zip(there.items, moved.items, strict=True)
    )
    assert max(e.timestamp for e in moved.events) < end
    # Event ids name the window, so two shops moved apart never share one.
    assert not {e.event_id for e in moved.events} & {e.event_id for e in there.events}


def test_a_seed_still_makes_the_same_shop() -> None:
    """The demo, the benchmarks and the load tests agree on the data through the seed alone: this digest
    of a small shop (every item, event and user id, as the wire carries them) changes only when the
    generator's behaviour does, which is then a change to say in the CHANGELOG (`make demo`'s report moves)."""
    config = ShopConfig(users=80, items=60, categories=6, days=5, seed=3, end=datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    shop = generate_shop(config)
    digest = hashlib.sha256()
    for model in [*shop.items, *shop.events]:
        digest.update(model.model_dump_json().encode())
    digest.update(",".join(shop.users).encode())
    assert (len(shop.items), len(shop.events)) == (60, 1860)
    assert digest.hexdigest() == "28e4645d23befda2d5115c8b661c3f2f561945c5fff0f8a43f55c1275e175592"


def test_sizes_follow_the_config(shop: Shop) -> None:
    assert len(shop.users) == SMALL.users == len(set(shop.users))
    assert len(shop.items) == SMALL.items == len({it.item_id for it in shop.items})
    assert len({it.category for it in shop.items}) == SMALL.categories
    expected = SMALL.users * SMALL.events_per_user
    assert 0.75 * expected < len(shop.events) < 1.3 * expected
    assert {e.user_id for e in shop.events} <= set(shop.users)
    assert {e.item_id for e in shop.events} <= {it.item_id for it in shop.items}
    summary = shop_summary(shop)
    assert summary["events"] == len(shop.events)
    assert sum(summary[k] for k in ("views", "clicks", "add_to_carts", "purchases", "ratings")) == len(shop.events)


def test_timestamps_are_inside_the_window_sorted_and_after_the_item_existed(shop: Shop) -> None:
    start = END - timedelta(days=SMALL.days)
    stamps = [e.timestamp for e in shop.events]
    assert all(ts.tzinfo is not None and ts.utcoffset() == timedelta(0) for ts in stamps)
    assert all(start < ts < END for ts in stamps)
    assert stamps == sorted(stamps)
    created = {it.item_id: it.created_at for it in shop.items}
    assert all(created[e.item_id] is None or created[e.item_id] <= e.timestamp for e in shop.events)
    assert sum(1 for c in created.values() if c is not None and c > start) > 0.05 * len(created)  # fresh items


def test_default_window_ends_just_before_now() -> None:
    tiny = generate_shop(ShopConfig(users=20, items=30, categories=3, days=2))
    now = datetime.now(UTC)
    assert tiny.events and all(e.timestamp < now - timedelta(seconds=59) for e in tiny.events)
    assert tiny.events[-1].timestamp > now - timedelta(days=2)
    with pytest.raises(ValueError, match="future"):
        generate_shop(ShopConfig(users=5, items=5, categories=1, end=now + timedelta(hours=1)))


def test_events_are_valid_on_the_wire_with_unique_ids(shop: Shop) -> None:
    ids = [e.event_id for e in shop.events]
    assert len(set(ids)) == len(ids)
    # The fast uuid5 is the standard one.
    assert ids[0] == str(uuid.uuid5(EVENT_NAMESPACE, f"{SMALL.seed}/{int(END.timestamp() * 1000)}/0"))
    for e in shop.events:
        assert Event.model_validate_json(e.model_dump_json()) == e
        assert e.context.session_id and e.context.device in DEVICES and e.context.locale
    for it in shop.items:
        assert Item.model_validate_json(it.model_dump_json()) == it
    price = {it.item_id: it.price for it in shop.items}
    ratings = [e.value for e in shop.events if e.type is EventType.RATING]
    assert ratings and set(ratings) <= {1.0, 2.0, 3.0, 4.0, 5.0} and len(set(ratings)) >= 3
    assert all(e.value == price[e.item_id] for e in shop.events if e.type is EventType.PURCHASE)


def test_funnel_narrows(shop: Shop) -> None:
    counts = Counter(e.type for e in shop.events)
    assert counts[EventType.VIEW] > counts[EventType.CLICK] > counts[EventType.ADD_TO_CART]
    assert counts[EventType.ADD_TO_CART] > counts[EventType.PURCHASE] > 0


def test_popularity_is_heavy_tailed(shop: Shop) -> None:
    views = Counter(e.item_id for e in shop.events if e.type is EventType.VIEW)
    ranked = sorted(views.values(), reverse=True)
    assert sum(ranked[: len(shop.items) // 10]) > 0.4 * sum(ranked)


def test_sessions_stay_in_a_category_far_more_than_chance(shop: Shop) -> None:
    summary = shop_summary(shop)
    assert summary["same_category_next_share"] > 0.5
    assert summary["same_category_next_share"] > 3 * summary["same_category_base_rate"]


def test_next_item_transitions_beat_popularity_on_a_time_split(shop: Shop) -> None:
    """Item-to-item co-occurrence learned on the past predicts the next view better than popularity."""
    index = {it.item_id: n for n, it in enumerate(shop.items)}
    split = shop.events[int(0.8 * len(shop.events))].timestamp
    pairs = [
        (index[a.item_id], index[b.item_id], b.timestamp >= split)
        for views in _views_by_session(shop).values()
        for a, b in itertools.pairwise(views)
    ]
    prev, nxt, is_test = (np.array(col) for col in zip(*pairs, strict=True))
    train = ~is_test
    n = len(shop.items)
    popularity = np.bincount(nxt[train], minlength=n).astype(float)
    transitions = np.zeros((n, n))
    np.add.at(transitions, (prev[train], nxt[train]), 1.0)
    # Ties (and unseen rows) fall back to popularity, as a production item-item recommender would.
    scores = transitions[prev[is_test]] + 1e-6 * popularity
    top_transition = np.argsort(-scores, axis=1)[:, :10]
    top_popular = np.argsort(-popularity)[:10]
    target = nxt[is_test]
    hr_transition = float(np.mean((top_transition == target[:, None]).any(axis=1)))
    hr_popular = float(np.mean(np.isin(target, top_popular)))
    assert is_test.sum() > 500
    assert hr_popular > 2 * 10 / n  # popularity is a real baseline ...
    assert hr_transition > hr_popular + 0.15  # ... and sequence structure beats it clearly


def test_context_shapes_behaviour(shop: Shop) -> None:
    """Mobile shops in the evening and converts less than desktop: context features carry signal."""
    by_device: dict[str, Counter[str]] = {}
    evening: dict[str, list[bool]] = {}
    for e in shop.events:
        device = e.context.device or "unknown"
        by_device.setdefault(device, Counter())[e.type] += 1
        if e.type is EventType.VIEW:
            evening.setdefault(device, []).append(18 <= e.timestamp.hour <= 23)

    def conversion(device: str) -> float:
        return by_device[device][EventType.PURCHASE] / by_device[device][EventType.VIEW]

    assert conversion("mobile") < conversion("desktop")
    assert np.mean(evening["mobile"]) > np.mean(evening["desktop"]) + 0.15


def test_some_category_trends_up_at_the_end(shop: Shop) -> None:
    category = {it.item_id: it.category for it in shop.items}
    late_from = END - timedelta(days=SMALL.days * 0.2)
    early = Counter(category[e.item_id] for e in shop.events if e.type is EventType.VIEW and e.timestamp < late_from)
    late = Counter(category[e.item_id] for e in shop.events if e.type is EventType.VIEW and e.timestamp >= late_from)
    n_early, n_late = sum(early.values()), sum(late.values())
    growth = {c: (late[c] / n_late) / (early[c] / n_early) for c in early if early[c] >= 50}
    assert max(growth.values()) > 1.5


def test_titles_carry_category_words(shop: Shop) -> None:
    """Text features must be informative: most titles have a word no other category uses."""
    categories_of: dict[str, set[str]] = {}
    for it in shop.items:
        for token in tokenize(it.title):
            categories_of.setdefault(token, set()).add(it.category)
    telling = [any(categories_of[t] == {it.category} for t in tokenize(it.title)) for it in shop.items]
    assert np.mean(telling) > 0.9
    assert all(set(it.attributes) == {"brand", "color"} and it.price and it.price > 0 for it in shop.items)


def test_id_formats_round_trip() -> None:
    assert user_id(42) == "u00042" and item_id(17) == "i00017"
    assert user_index("u00042") == 42 and item_index(item_id(123456)) == 123456
    with pytest.raises(ValueError, match="synthetic id"):
        item_index("u00001")
