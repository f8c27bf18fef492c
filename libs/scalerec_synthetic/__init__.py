"""A synthetic shop with the structure real shops have, so the demo and the end-to-end tests mean something.

Random clicks would make every model look alike: nothing to learn, nothing to beat.  This generator plants
the effects that the platform's models are built to find, each one strong enough to measure and none so
strong that the task is trivial:

* **popularity** — Zipf-distributed within each category, so "most popular" is a decent baseline to beat;
* **taste** — each user prefers a few categories (a sparse Dirichlet mix), so user-level models beat
  global popularity;
* **sequences** — items of a category sit on a ring and a session mostly walks to near neighbours, so
  next-item structure (item-item CF, a sequential transformer) is the strongest signal;
* **content** — titles use category words and a word shared by neighbours on the ring, so text features
  help with items nobody has touched yet (fresh items appear during the window);
* **context** — time of day depends on the user and their device (mobile users in the evening), mobile
  sessions are longer and convert less, desktop converts more; conversion falls with price and rises
  with taste;
* **drift** — in the last quarter of the window a couple of categories trend up and one cools down, so a
  model trained on old data is stale.

Everything is drawn from one seeded ``numpy`` generator and vectorised across sessions (a session walk
is one numpy step for all sessions at once).  The default shop (~80k events) takes 1.5-2.5 s on a shared
2-core machine, nearly all of it building the validated pydantic events; the numbers take ~0.1 s.
Ids are stable strings (``u00042``, ``i00017``) shared with the load tests.

A library of its own, not part of the CLI, because more than the demo needs it: the tests, the load tests
(their ids), the benchmarks. It imports only ``scalerec_events`` and ``scalerec_features`` of ours (no
service, no CLI, no model code; ``tests/unit/test_layering.py``), so an image with ``libs/`` alone (the
Locust image) can import it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import numpy as np
from scalerec_events.models import Context, Event, EventType, Item
from scalerec_features import Device

__all__ = [
    "DEVICE_NAMES",
    "DEVICE_SHARES",
    "EVENT_NAMESPACE",
    "LOCALES",
    "Shop",
    "ShopConfig",
    "generate_shop",
    "item_id",
    "item_index",
    "shop_summary",
    "user_id",
    "user_index",
]

# ---------------------------------------------------------------------------------------------- ids

USER_PREFIX = "u"
ITEM_PREFIX = "i"
# Five digits covers the demo sizes; larger indices simply get more digits (ids stay unique and sortable
# within a size class).
ID_DIGITS = 5


def user_id(index: int) -> str:
    """The id of the ``index``-th user (``u00042``): the one format every tool (demo, load tests) uses."""
    return f"{USER_PREFIX}{index:0{ID_DIGITS}d}"


def item_id(index: int) -> str:
    """The id of the ``index``-th item (``i00017``)."""
    return f"{ITEM_PREFIX}{index:0{ID_DIGITS}d}"


def user_index(uid: str) -> int:
    """Inverse of :func:`user_id`; raises ``ValueError`` on an id of another format."""
    return _parse(uid, USER_PREFIX)


def item_index(iid: str) -> int:
    """Inverse of :func:`item_id`; raises ``ValueError`` on an id of another format."""
    return _parse(iid, ITEM_PREFIX)


def _parse(value: str, prefix: str) -> int:
    if not value.startswith(prefix) or not value[len(prefix) :].isdigit():
        raise ValueError(f"{value!r} is not a synthetic id of the form {prefix}{'0' * ID_DIGITS}")
    return int(value[len(prefix) :])


# Deterministic event ids: uuid5 of (seed, end of window, position), so the same config reproduces the
# same ids (re-posting is idempotent) while a shop generated for another window gets new ones.
EVENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://scalerec.dev/synthetic-shop/events")


def _uuid5(name: str, _ns: bytes = EVENT_NAMESPACE.bytes) -> str:
    """``str(uuid.uuid5(EVENT_NAMESPACE, name))`` without the ``UUID`` object, which costs 10 us an event."""
    digest = bytearray(hashlib.sha1(_ns + name.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# ------------------------------------------------------------------------------------- vocabulary


class _CategorySpec(NamedTuple):
    name: str
    median_price: float
    nouns: tuple[str, ...]
    words: tuple[str, ...]
    brands: tuple[str, ...]


_CATEGORIES: tuple[_CategorySpec, ...] = (
    _CategorySpec("running shoes", 95, ("runner", "trainer", "sneaker"),
                  ("trail", "mesh", "cushioned", "marathon", "road", "grip", "breathable", "tempo", "stability",
                   "carbon"), ("Stridex", "Pacewell", "Trailborn", "Kinetic")),
    _CategorySpec("headphones", 85, ("headphones", "earbuds", "headset"),
                  ("wireless", "noise-cancelling", "bass", "bluetooth", "over-ear", "studio", "foldable", "hifi",
                   "sport", "in-ear"), ("Sonora", "Audiant", "Quietline")),
    _CategorySpec("coffee", 16, ("beans", "blend", "roast"),
                  ("espresso", "arabica", "dark", "medium", "single-origin", "decaf", "colombian", "ethiopian",
                   "whole-bean", "crema"), ("Roastery", "Bean&Co", "Morning Ritual")),
    _CategorySpec("fiction books", 14, ("novel", "paperback", "hardcover"),
                  ("mystery", "thriller", "romance", "fantasy", "saga", "detective", "epic", "bestseller",
                   "historical", "crime"), ("Penfold Press", "Harbor Books", "Lantern House")),
    _CategorySpec("cookware", 45, ("pan", "pot", "skillet", "wok"),
                  ("nonstick", "cast-iron", "stainless", "induction", "ceramic", "saute", "copper", "dutch-oven",
                   "oven-safe", "enamel"), ("Ironhearth", "ChefLine", "Cucina")),
    _CategorySpec("yoga", 30, ("mat", "block", "strap"),
                  ("yoga", "pilates", "non-slip", "eco", "cork", "travel", "thick", "stretch", "alignment",
                   "meditation"), ("Lotusform", "Zenflex", "Asana")),
    _CategorySpec("smartphones", 450, ("phone", "smartphone"),
                  ("5g", "dual-sim", "oled", "camera", "128gb", "256gb", "flagship", "compact", "unlocked",
                   "fast-charge"), ("Novaphone", "Pixelon", "Orbit")),
    _CategorySpec("laptops", 900, ("laptop", "notebook", "ultrabook"),
                  ("16gb", "ssd", "touchscreen", "gaming", "ultralight", "14-inch", "business", "creator",
                   "convertible", "oled"), ("Vertex", "Lumen", "Arcbook")),
    _CategorySpec("board games", 35, ("game", "boardgame"),
                  ("strategy", "family", "party", "cooperative", "dice", "card", "deckbuilding", "expansion",
                   "worker-placement", "trivia"), ("Meeple Works", "Tabletop Co", "Rollhouse")),
    _CategorySpec("skincare", 22, ("serum", "cream", "cleanser", "moisturizer"),
                  ("hydrating", "vitamin-c", "spf", "retinol", "hyaluronic", "gentle", "night", "organic",
                   "brightening", "fragrance-free"), ("Dermaleaf", "Glowlab", "PureSkin")),
    _CategorySpec("dog supplies", 25, ("leash", "bed", "toy", "collar", "bowl"),
                  ("dog", "puppy", "chew", "orthopedic", "reflective", "durable", "squeaky", "washable", "harness",
                   "training"), ("Pawsome", "Barkley", "Good Boy")),
    _CategorySpec("camping", 70, ("tent", "sleeping-bag", "stove", "lantern"),
                  ("camping", "waterproof", "ultralight", "2-person", "backpacking", "insulated", "4-season",
                   "compact", "solar", "trekking"), ("Basecamp", "Northridge", "Wildtrail")),
    _CategorySpec("watches", 150, ("watch", "smartwatch", "chronograph"),
                  ("analog", "automatic", "steel", "leather", "dive", "gps", "fitness", "sapphire", "titanium",
                   "heart-rate"), ("Tempora", "Chronos", "Meridian")),
    _CategorySpec("toys", 25, ("toy", "playset", "blocks", "puzzle"),
                  ("kids", "building", "educational", "plush", "wooden", "robot", "stem", "toddler", "magnetic",
                   "racing"), ("Playmore", "Tinker Tots", "Brickly")),
    _CategorySpec("gardening", 20, ("seeds", "pruner", "hose", "planter"),
                  ("garden", "heirloom", "tomato", "raised-bed", "watering", "herb", "perennial", "compost",
                   "greenhouse", "succulent"), ("Greenthumb", "Bloomfield", "Rootwell")),
    _CategorySpec("jackets", 120, ("jacket", "parka", "coat", "windbreaker"),
                  ("down", "waterproof", "hooded", "fleece", "puffer", "rain", "softshell", "packable", "quilted",
                   "shell"), ("Stormline", "Alpenwear", "Northpeak")),
    _CategorySpec("tea", 11, ("tea", "infusion"),
                  ("green", "oolong", "matcha", "chamomile", "earl-grey", "loose-leaf", "herbal", "sencha", "chai",
                   "rooibos"), ("Leaf&Cup", "Teahouse", "Steep")),
    _CategorySpec("gaming gear", 60, ("controller", "keyboard", "mouse", "headset"),
                  ("rgb", "mechanical", "wireless", "esports", "console", "pro", "macro", "ergonomic", "hall-effect",
                   "low-latency"), ("Fragforce", "Pixelgrip", "Nexus")),
    _CategorySpec("bicycles", 600, ("bike", "bicycle", "ebike"),
                  ("mountain", "gravel", "road", "carbon", "hybrid", "electric", "commuter", "suspension",
                   "folding", "tubeless"), ("Velocita", "Ridgeline", "Cadence")),
    _CategorySpec("baby", 30, ("stroller", "bottle", "onesie", "carrier"),
                  ("baby", "newborn", "organic-cotton", "lightweight", "convertible", "soft", "infant",
                   "anti-colic", "swaddle", "travel-system"), ("Littlenest", "Cradle", "Bumble")),
    _CategorySpec("cameras", 700, ("camera", "lens", "tripod"),
                  ("mirrorless", "dslr", "zoom", "prime", "4k", "wide-angle", "full-frame", "stabilized", "macro",
                   "vlogging"), ("Optika", "Shutterline", "Aperture")),
    _CategorySpec("furniture", 250, ("chair", "desk", "sofa", "shelf"),
                  ("oak", "ergonomic", "standing", "modern", "velvet", "walnut", "modular", "reclining",
                   "scandinavian", "upholstered"), ("Hearthwood", "Nordhem", "Loft")),
    _CategorySpec("jewelry", 90, ("necklace", "ring", "bracelet", "earrings"),
                  ("silver", "gold", "pearl", "gemstone", "minimalist", "vintage", "pendant", "hoop", "sterling",
                   "engraved"), ("Aurelia", "Lumina", "Goldleaf")),
    _CategorySpec("fragrance", 65, ("perfume", "cologne", "eau-de-parfum"),
                  ("floral", "woody", "citrus", "musk", "vanilla", "amber", "fresh", "oud", "aquatic", "spicy"),
                  ("Maison Vel", "Essence", "Noir")),
)  # fmt: skip

_COLORS = ("black", "white", "navy", "red", "green", "grey", "blue", "beige", "olive", "pink", "orange", "purple")
LOCALES = ("en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "it-IT", "nl-NL", "pl-PL", "sv-SE", "pt-BR", "ja-JP")
_LOCALE_SHARES = (0.34, 0.12, 0.11, 0.09, 0.07, 0.05, 0.04, 0.04, 0.03, 0.06, 0.05)
_REFERRERS = ("direct", "search", "email", "social", "ads")

# ----------------------------------------------------------------------------------- behaviour knobs

# Device effects (index order = DEVICE_NAMES).  Mobile: more, shorter views, fewer conversions.
DEVICE_NAMES: tuple[Device, ...] = ("mobile", "desktop", "tablet")
DEVICE_SHARES = (0.55, 0.35, 0.10)
_PEAK_HOUR = np.array([20.5, 13.0, 21.0])  # hour of the shop's day around which a device's users shop (below)
_VIEWS_PER_SESSION = np.array([6.5, 4.5, 5.5])  # mean of the geometric session length
_DWELL_S = np.array([25.0, 55.0, 40.0])  # mean seconds between two views
_CLICK = np.array([0.22, 0.30, 0.26])  # P(click | view) at full taste
_CART = np.array([0.22, 0.38, 0.30])  # P(add_to_cart | click) at median price and full taste
_BUY = np.array([0.30, 0.50, 0.40])  # P(purchase | add_to_cart) at median price

_ZIPF_S = 1.2  # popularity exponent within a category
_FRESH_SHARE = 0.12  # items created inside the window
_FRESH_BOOST = 2.5  # novelty: a fresh item gets this much more attention than its rank says
_LATE_USER_SHARE = 0.12  # users whose first visit falls in the last 40% of the window (cold users)
_P_SWITCH = 0.2  # per step: jump to another category drawn from the user's taste
_P_RING = 0.72  # per step when staying: go to a ring neighbour (else a popularity draw in the category)
_RING_OFFSETS = np.array([1, -1, 2, -2, 3, -3])
_RING_PROBS = np.array([0.42, 0.22, 0.15, 0.09, 0.07, 0.05])
_DRIFT_FROM = 0.75  # fraction of the window after which the trends apply
_P_RATE_PURCHASE = 0.3
_P_RATE_VIEW = 0.004

# Every shop is generated in one frame, a window ending on a Sunday at noon UTC, then moved as a whole to
# end at ``ShopConfig.end``.  Sessions fall on the days and hours of that frame (peak hours, busier
# weekends), so a window ending at another time of day or week is the same shop, not another draw: the
# demo's holdout (the newest tenth of the window) no longer holds more or fewer evenings depending on the
# hour `make demo` ran, which moved item-CF's NDCG@10 there by ±0.03 between runs.  A shop ending at the
# frame's end (test_synthetic's window), or a whole number of weeks from it, shops on UTC hours: mobile users
# around 20:30 UTC; elsewhere the hours and weekdays move with the window.
_FRAME_END = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

_TYPES = (EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE, EventType.RATING)
_VIEW, _CLICK_T, _CART_T, _PURCHASE_T, _RATING_T = range(5)


# ------------------------------------------------------------------------------------------- API


@dataclass(frozen=True)
class ShopConfig:
    """Size and seed of a synthetic shop.  ``end`` defaults to one minute before generation time; it moves the
    shop in time, it does not change it (the same seed and sizes make the same events, their times and
    ids apart)."""

    users: int = 3000
    items: int = 1500
    categories: int = 20
    days: int = 30
    events_per_user: float = 25.0
    seed: int = 7
    end: datetime | None = None


@dataclass
class Shop:
    """Catalogue, users and their events (sorted by timestamp, all inside ``(end - days, end)``)."""

    items: list[Item]
    events: list[Event]
    users: list[str]
    config: ShopConfig


def generate_shop(config: ShopConfig) -> Shop:
    """Generate a shop deterministically from ``config`` (same config, same shop, same event ids)."""
    if config.users < 1 or config.items < 1 or config.categories < 1 or config.days < 1:
        raise ValueError(f"users, items, categories and days must be positive: {config}")
    if config.items < config.categories:
        raise ValueError(f"every category needs an item: {config.items} items for {config.categories} categories")
    if config.events_per_user <= 0:
        raise ValueError(f"events_per_user must be positive: {config.events_per_user}")
    end = config.end if config.end is not None else datetime.now(UTC) - timedelta(minutes=1)
    end = (end if end.tzinfo is not None else end.replace(tzinfo=UTC)).astimezone(UTC)
    if end > datetime.now(UTC):
        raise ValueError(f"the window must end in the past, not at {end.isoformat()}: events cannot be in the future")
    rng = np.random.default_rng(config.seed)
    # Whole milliseconds, so that what the wire carries is exactly what was generated.
    end_s = math.floor(end.timestamp() * 1000) / 1000
    # Drawn in the fixed frame (see _FRAME_END), then moved by a whole number of milliseconds.
    frame_end_s = _FRAME_END.timestamp()
    start_s = frame_end_s - config.days * 86400.0
    shift_ms = round((end_s - frame_end_s) * 1000)

    cat = _make_categories(rng, config)
    items = _make_items(rng, config, cat, start_s, frame_end_s)
    users = _make_users(rng, config, cat, start_s, frame_end_s)
    sessions = _make_sessions(rng, config, users, start_s, frame_end_s)
    raw = _walk_and_convert(rng, cat, items, users, sessions, start_s, frame_end_s)
    items = items._replace(created_s=items.created_s + shift_ms / 1000)

    item_ids = [item_id(int(x)) for x in items.external]
    user_ids = [user_id(u) for u in range(config.users)]
    catalogue = sorted(
        (_item_model(rng, cat, items, j, item_ids[j]) for j in range(config.items)), key=lambda it: it.item_id
    )
    events = _event_models(config, raw, users, sessions, item_ids, user_ids, end_s, shift_ms)
    return Shop(items=catalogue, events=events, users=user_ids, config=config)


def shop_summary(shop: Shop) -> dict[str, int | float]:
    """Counts and the structure statistics that tell whether the shop is worth learning from."""
    by_type = Counter(e.type for e in shop.events)
    views = [e for e in shop.events if e.type is EventType.VIEW]
    view_counts = np.array(sorted(Counter(e.item_id for e in views).values(), reverse=True), dtype=float)
    n_items = len(shop.items)
    total_views = max(float(view_counts.sum()), 1.0)

    def top_share(fraction: float) -> float:
        return round(float(view_counts[: max(1, int(n_items * fraction))].sum()) / total_views, 4)

    category = {it.item_id: it.category for it in shop.items}
    by_session: dict[str | None, list[str]] = {}
    for e in views:
        by_session.setdefault(e.context.session_id, []).append(category[e.item_id])
    pairs = same = 0
    for cats in by_session.values():
        pairs += len(cats) - 1
        same += sum(a == b for a, b in itertools.pairwise(cats))
    cat_share = np.array(list(Counter(category[e.item_id] for e in views).values()), dtype=float) / total_views
    start = shop.events[0].timestamp if shop.events else None
    end = shop.events[-1].timestamp if shop.events else None
    window_start = (end or datetime.now(UTC)) - timedelta(days=shop.config.days)
    return {
        "users": len(shop.users),
        "active_users": len({e.user_id for e in shop.events}),
        "items": n_items,
        "categories": len(set(category.values())),
        "fresh_items": sum(1 for it in shop.items if it.created_at is not None and it.created_at > window_start),
        "events": len(shop.events),
        "sessions": len(by_session),
        "views": by_type[EventType.VIEW],
        "clicks": by_type[EventType.CLICK],
        "add_to_carts": by_type[EventType.ADD_TO_CART],
        "purchases": by_type[EventType.PURCHASE],
        "ratings": by_type[EventType.RATING],
        "days": shop.config.days,
        "span_days": round((end - start).total_seconds() / 86400, 2) if start and end else 0.0,
        "events_per_user": round(len(shop.events) / max(len(shop.users), 1), 2),
        "conversion_rate": round(by_type[EventType.PURCHASE] / max(by_type[EventType.VIEW], 1), 4),
        "top1pct_view_share": top_share(0.01),
        "top10pct_view_share": top_share(0.10),
        "same_category_next_share": round(same / max(pairs, 1), 4),
        # What the same-category share would be if the next item were drawn independently of the last one.
        "same_category_base_rate": round(float((cat_share**2).sum()), 4),
    }


# ------------------------------------------------------------------------------------- internals


class _Categories(NamedTuple):
    specs: list[_CategorySpec]
    popularity: np.ndarray  # (C,) global share of interest, also the base of every user's taste
    price_mu: np.ndarray  # (C,) log of the median price
    trend: np.ndarray  # (C,) taste multiplier in the drift period


class _Items(NamedTuple):
    category: np.ndarray  # (I,) internal order is category-major, ring order within the category
    cat_start: np.ndarray  # (C,)
    cat_size: np.ndarray  # (C,)
    weight: np.ndarray  # (I,) popularity weight (Zipf by rank within the category, fresh items boosted)
    edges: np.ndarray  # (I,) category + normalised cumulative popularity: a searchsorted table per category
    anchor: np.ndarray  # (C,) the most popular item of each category; always exists before the window
    created_s: np.ndarray  # (I,) creation time, epoch seconds
    price: np.ndarray  # (I,)
    quality: np.ndarray  # (I,) shifts ratings
    style: np.ndarray  # (I,) index of the ring-segment word shared by neighbours
    external: np.ndarray  # (I,) the number in the public id: a permutation, so ids reveal nothing


class _Users(NamedTuple):
    taste: np.ndarray  # (U, C) rows sum to 1
    device: np.ndarray  # (U,) index into DEVICE_NAMES
    locale: np.ndarray  # (U,) index into LOCALES
    peak_hour: np.ndarray  # (U,)
    first_s: np.ndarray  # (U,) time of the first possible visit
    activity: np.ndarray  # (U,) relative number of sessions, mean 1


class _Sessions(NamedTuple):
    user: np.ndarray  # (S,)
    start_s: np.ndarray  # (S,)
    device: np.ndarray  # (S,)
    length: np.ndarray  # (S,) number of views
    number: np.ndarray  # (S,) k-th session of its user
    referrer: np.ndarray  # (S,)


class _Raw(NamedTuple):
    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray
    ts: np.ndarray
    session: np.ndarray  # session index, or -1 - rating number for a rating given on a later visit
    value: np.ndarray  # NaN when absent
    first_view: np.ndarray  # bool: the event opens its session (carries the referrer)


def _make_categories(rng: np.random.Generator, config: ShopConfig) -> _Categories:
    n = config.categories
    specs = [_CATEGORIES[k] for k in rng.permutation(len(_CATEGORIES))[: min(n, len(_CATEGORIES))]]
    for k in range(len(specs), n):  # more categories than the vocabulary knows: made-up but consistent words
        words = tuple(f"c{k}w{w}" for w in range(10))
        specs.append(_CategorySpec(f"category {k}", 50.0, (f"c{k}item",), words, (f"c{k}brand",)))
    popularity = rng.dirichlet(np.full(n, 3.0))
    trend = np.ones(n)
    if n >= 3:
        up = rng.choice(n, size=2, replace=False)
        trend[up] = 3.0
        down = rng.choice(np.setdiff1d(np.arange(n), up))
        trend[down] = 0.4
    price_mu = np.log([s.median_price for s in specs])
    return _Categories(specs, popularity, price_mu, trend)


def _make_items(rng: np.random.Generator, config: ShopConfig, cat: _Categories, start_s: float, end_s: float) -> _Items:
    n_items, n_cat = config.items, config.categories
    minimum = 3 if n_items >= 3 * n_cat else 1  # no empty category (checked by generate_shop)
    sizes = np.full(n_cat, minimum) + rng.multinomial(n_items - minimum * n_cat, rng.dirichlet(np.full(n_cat, 4.0)))
    category = np.repeat(np.arange(n_cat), sizes)
    cat_start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ring_pos = np.arange(n_items) - cat_start[category]

    # Popularity rank is independent of ring position: the popular items are scattered around the ring.
    rank = np.empty(n_items, dtype=np.int64)
    for c in range(n_cat):
        rank[cat_start[c] : cat_start[c] + sizes[c]] = rng.permutation(sizes[c])
    weight = (rank + 1.0) ** -_ZIPF_S

    span = end_s - start_s
    fresh = (rng.random(n_items) < _FRESH_SHARE) & (rank > 0)  # the head of each category is established
    created = start_s - rng.uniform(1, 365, n_items) * 86400
    fresh_at = rng.uniform(start_s + 0.1 * span, max(end_s - 2 * 86400, start_s + 0.2 * span), n_items)
    created = np.where(fresh, fresh_at, created)
    weight = np.where(fresh, weight * _FRESH_BOOST, weight)

    totals = np.bincount(category, weights=weight, minlength=n_cat)
    within = np.cumsum(weight) - np.concatenate([[0.0], np.cumsum(totals)[:-1]])[category]
    edges = category + within / np.where(totals > 0, totals, 1.0)[category]
    anchor = np.array(
        [
            cat_start[c] + int(np.argmin(rank[cat_start[c] : cat_start[c] + sizes[c]])) if sizes[c] else 0
            for c in range(n_cat)
        ]
    )

    # Shop prices end in .99 (and are exact to the cent once rounded).
    price = np.round(np.maximum(np.round(np.exp(cat.price_mu[category] + rng.normal(0, 0.45, n_items))), 1) - 0.01, 2)
    quality = rng.normal(0, 0.6, n_items)
    segment = max(1, round(np.mean(sizes) / 8))  # ~8 style words around each ring
    style = (ring_pos // segment + rng.integers(0, 10, n_cat)[category]) % 10
    external = rng.permutation(n_items)
    return _Items(category, cat_start, sizes, weight, edges, anchor, created, price, quality, style, external)


def _make_users(rng: np.random.Generator, config: ShopConfig, cat: _Categories, start_s: float, end_s: float) -> _Users:
    n_users, n_cat = config.users, config.categories
    # Weighted sampling of 1-4 liked categories without replacement (Gumbel top-k), then Dirichlet(1)
    # weights over them (normalised exponentials): the vectorised form of a per-user rng.choice loop.
    n_liked = np.minimum(1 + rng.binomial(3, 0.4, n_users), n_cat)
    keys = np.log(cat.popularity) + rng.gumbel(size=(n_users, n_cat))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    taste = np.where(rank < n_liked[:, None], rng.exponential(size=(n_users, n_cat)), 0.0)
    taste /= taste.sum(axis=1, keepdims=True)
    # A little of everything, so that exploration and the trends can reach every user.
    taste = 0.9 * taste + 0.1 * cat.popularity
    device = rng.choice(len(DEVICE_NAMES), size=n_users, p=DEVICE_SHARES)
    locale = rng.choice(len(LOCALES), size=n_users, p=np.array(_LOCALE_SHARES) / sum(_LOCALE_SHARES))
    peak_hour = _PEAK_HOUR[device] + rng.normal(0, 1.5, n_users)
    span = end_s - start_s
    late = rng.random(n_users) < _LATE_USER_SHARE
    first_s = np.where(late, rng.uniform(start_s + 0.6 * span, end_s - 0.05 * span, n_users), start_s)
    activity = rng.lognormal(0, 0.7, n_users)
    activity /= activity.mean()
    return _Users(taste, device, locale, peak_hour, first_s, activity)


def _events_per_session(device: np.ndarray) -> float:
    """Expected events of a session (views and the funnel behind them), to size sessions to the target."""
    views = _VIEWS_PER_SESSION[device]
    click = _CLICK[device] * 0.75
    return float(np.mean(views * (1 + click + click * _CART[device] * 0.45 * (1 + _BUY[device] * 1.2))))


def _make_sessions(
    rng: np.random.Generator, config: ShopConfig, users: _Users, start_s: float, end_s: float
) -> _Sessions:
    per_session = _events_per_session(users.device)
    # Late users have less time to come back; scale their sessions by the time they have.
    presence = (end_s - users.first_s) / (end_s - start_s)
    expected = users.activity * presence * config.events_per_user / per_session
    n_sess = 1 + rng.poisson(np.maximum(expected - 1.0, 0.0))
    user = np.repeat(np.arange(config.users), n_sess)
    number = np.arange(len(user)) - np.repeat(np.cumsum(n_sess) - n_sess, n_sess)
    n = len(user)

    # Time of day around the user's peak hour (15% at any hour); weekends are busier.  Rejection sampling,
    # vectorised over the sessions still missing a valid time.
    start = np.empty(n)
    todo = np.arange(n)
    for _ in range(20):
        if not len(todo):
            break
        u = user[todo]
        first = users.first_s[u]
        day = np.floor((first + rng.random(len(todo)) * (end_s - first)) / 86400) * 86400
        hour = np.where(
            rng.random(len(todo)) < 0.15,
            rng.uniform(0, 24, len(todo)),
            (users.peak_hour[u] + rng.normal(0, 2.5, len(todo))) % 24,
        )
        t = day + hour * 3600
        weekday = ((t // 86400).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday (3)
        keep = (t >= first) & (t < end_s - 60) & (rng.random(len(todo)) < np.where(weekday >= 5, 1.0, 0.8))
        start[todo[keep]] = t[keep]
        todo = todo[~keep]
    u = user[todo]
    start[todo] = users.first_s[u] + rng.random(len(todo)) * (end_s - 60 - users.first_s[u])
    start += 1.0  # strictly after the window start

    switch = rng.random(n) < 0.2
    device = np.where(switch, rng.choice(len(DEVICE_NAMES), size=n, p=DEVICE_SHARES), users.device[user])
    length = np.minimum(rng.geometric(1.0 / _VIEWS_PER_SESSION[device]), 60)
    referrer = rng.integers(0, len(_REFERRERS), n)
    return _Sessions(user, start, device, length, number, referrer)


def _draw_category(
    rng: np.random.Generator, cat: _Categories, users: _Users, user: np.ndarray, late: np.ndarray
) -> np.ndarray:
    probs = users.taste[user]
    probs = np.where(late[:, None], probs * cat.trend, probs)
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(user)) * cum[:, -1]
    return np.minimum((cum <= u[:, None]).sum(axis=1), probs.shape[1] - 1)


def _draw_popular(rng: np.random.Generator, items: _Items, category: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Items drawn by popularity within ``category``, among those that exist at time ``at``."""
    last = items.cat_start[category] + items.cat_size[category] - 1
    picked = np.minimum(np.searchsorted(items.edges, category + rng.random(len(category)), side="right"), last)
    bad = np.flatnonzero(items.created_s[picked] > at)
    for _ in range(8):  # rejection keeps the distribution exact among existing items
        if not len(bad):
            break
        redraw = np.searchsorted(items.edges, category[bad] + rng.random(len(bad)), side="right")
        picked[bad] = np.minimum(redraw, last[bad])
        bad = bad[items.created_s[picked[bad]] > at[bad]]
    picked[bad] = items.anchor[category[bad]]
    return picked


def _walk_and_convert(
    rng: np.random.Generator,
    cat: _Categories,
    items: _Items,
    users: _Users,
    sess: _Sessions,
    start_s: float,
    end_s: float,
) -> _Raw:
    n_sess = len(sess.user)
    offset = np.cumsum(sess.length) - sess.length
    n_views = int(sess.length.sum())
    v_sess = np.repeat(np.arange(n_sess), sess.length)
    gap = 5.0 + rng.exponential(_DWELL_S[sess.device[v_sess]])
    before = np.cumsum(gap) - gap
    v_time = sess.start_s[v_sess] + before - before[offset][v_sess]
    v_item = np.empty(n_views, dtype=np.int64)
    drift_from = start_s + _DRIFT_FROM * (end_s - start_s)

    # The walk: one vectorised step for every session still running.
    current = np.zeros(n_sess, dtype=np.int64)
    for step in range(int(sess.length.max(initial=0))):
        active = np.flatnonzero(sess.length > step)
        views = offset[active] + step
        at = v_time[views]
        if step == 0:
            nxt = _draw_popular(rng, items, _draw_category(rng, cat, users, sess.user[active], at > drift_from), at)
        else:
            prev = current[active]
            prev_cat = items.category[prev]
            r = rng.random(len(active))
            jump = r < _P_SWITCH
            ring = (r >= _P_SWITCH) & (rng.random(len(active)) < _P_RING)
            new_cat = np.where(jump, _draw_category(rng, cat, users, sess.user[active], at > drift_from), prev_cat)
            nxt = _draw_popular(rng, items, new_cat, at)
            # Near neighbours, favouring the closer and the more popular ones (popular items stay popular
            # even though sessions walk the ring); neighbours that do not exist yet are skipped.
            pos = (prev - items.cat_start[prev_cat])[:, None]
            around = items.cat_start[prev_cat][:, None] + (pos + _RING_OFFSETS) % items.cat_size[prev_cat][:, None]
            odds = _RING_PROBS * np.sqrt(items.weight[around]) * (items.created_s[around] <= at[:, None])
            cum = np.cumsum(odds, axis=1)
            pick = np.minimum((cum <= (rng.random(len(active)) * cum[:, -1])[:, None]).sum(axis=1), 5)
            neighbour = around[np.arange(len(active)), pick]
            ring &= cum[:, -1] > 0
            nxt = np.where(ring, neighbour, nxt)
        current[active] = nxt
        v_item[views] = nxt

    # The funnel behind each view.
    v_user = sess.user[v_sess]
    v_dev = sess.device[v_sess]
    v_cat = items.category[v_item]
    taste = users.taste[v_user, v_cat] / users.taste[v_user].max(axis=1)  # 1 for the favourite category
    dear = np.log(items.price[v_item]) - cat.price_mu[v_cat]  # > 0: pricier than the category's median
    clicked = rng.random(n_views) < np.clip(_CLICK[v_dev] * (0.45 + 0.75 * taste), 0, 0.95)
    p_cart = _CART[v_dev] * 2 * _sigmoid(-0.6 + 1.4 * taste - 1.5 * dear)
    carted = clicked & (rng.random(n_views) < np.clip(p_cart, 0, 0.95))
    bought = carted & (rng.random(n_views) < np.clip(_BUY[v_dev] * 2 * _sigmoid(-1.2 * dear), 0, 0.97))
    click_t = v_time + gap * rng.uniform(0.15, 0.35, n_views)
    cart_t = v_time + gap * rng.uniform(0.5, 0.9, n_views)
    sess_end = v_time[offset + sess.length - 1] + gap[offset + sess.length - 1]
    buy_t = sess_end[v_sess] + rng.uniform(20, 180, n_views)  # checkout at the end of the session
    rating_value = np.clip(np.round(3.1 + 1.3 * taste + items.quality[v_item] + rng.normal(0, 0.7, n_views)), 1, 5)
    rated = (bought & (rng.random(n_views) < _P_RATE_PURCHASE)) | (rng.random(n_views) < _P_RATE_VIEW)
    rate_t = np.where(bought, buy_t, v_time) + rng.uniform(1, 6, n_views) * 86400
    rating_value = np.where(bought, rating_value, np.minimum(rating_value, 4))  # unbought: lukewarm at best
    rated_idx = np.flatnonzero(rated)

    parts = [
        (np.arange(n_views), _VIEW, v_time, np.nan),
        (np.flatnonzero(clicked), _CLICK_T, click_t, np.nan),
        (np.flatnonzero(carted), _CART_T, cart_t, np.nan),
        (np.flatnonzero(bought), _PURCHASE_T, buy_t, items.price[v_item]),
        (rated_idx, _RATING_T, rate_t, rating_value),
    ]
    idx = np.concatenate([p[0] for p in parts])
    kind = np.concatenate([np.full(len(p[0]), p[1]) for p in parts])
    ts = np.concatenate([p[2][p[0]] for p in parts])
    value = np.concatenate([np.full(len(p[0]), np.nan) if np.isscalar(p[3]) else p[3][p[0]] for p in parts])
    session = v_sess[idx].copy()
    session[kind == _RATING_T] = -1 - np.arange(len(rated_idx))  # a later visit: its own session
    opens = np.zeros(n_views, dtype=bool)
    opens[offset] = True
    first_view = (kind == _VIEW) & opens[idx]

    keep = (ts > start_s) & (ts < end_s - 0.001)  # the observation window cuts what happens after it
    order = np.argsort(ts[keep], kind="stable")
    sel = np.flatnonzero(keep)[order]
    return _Raw(v_user[idx[sel]], v_item[idx[sel]], kind[sel], ts[sel], session[sel], value[sel], first_view[sel])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _item_model(rng: np.random.Generator, cat: _Categories, items: _Items, j: int, iid: str) -> Item:
    spec = cat.specs[int(items.category[j])]
    style = spec.words[int(items.style[j]) % len(spec.words)]
    extra = spec.words[int(rng.integers(len(spec.words)))]
    noun = spec.nouns[int(rng.integers(len(spec.nouns)))]
    brand = spec.brands[int(rng.integers(len(spec.brands)))]
    color = _COLORS[int(rng.integers(len(_COLORS)))]
    words = [style] if extra == style else [style, extra]
    title = f"{brand} {' '.join(words)} {noun}".replace("-", " ")
    text = f"A {color} {' '.join(reversed(words))} {noun} by {brand}, made for {spec.name} fans.".replace("-", " ")
    return Item(
        item_id=iid,
        category=spec.name,
        price=float(items.price[j]),
        title=title,
        text=text,
        attributes={"brand": brand, "color": color},
        created_at=datetime.fromtimestamp(float(items.created_s[j]), UTC),
    )


def _event_models(
    config: ShopConfig,
    raw: _Raw,
    users: _Users,
    sess: _Sessions,
    item_ids: list[str],
    user_ids: list[str],
    end_s: float,
    shift_ms: int,
) -> list[Event]:
    """Build the pydantic events, validated.

    Validation is kept on purpose: with pydantic-core it costs ~10 us an event, *less* than
    ``model_construct`` (~16 us), and it re-checks what the generator promises (ids, UTC timestamps not in
    the future, ratings with values).  Contexts are shared by the events of a session and validated once.
    """
    prefix = f"{config.seed}/{round(end_s * 1000)}/"
    sess_ids = [f"{user_ids[u]}-s{k:03d}" for u, k in zip(sess.user.tolist(), sess.number.tolist(), strict=True)]
    contexts: dict[tuple[int, bool], Context] = {}
    base = datetime.fromtimestamp(0, UTC)
    events: list[Event] = []
    ts_ms = (np.floor(raw.ts * 1000).astype(np.int64) + shift_ms).tolist()  # moved out of the frame
    for n, (u, i, kind, ms, s, value, first) in enumerate(
        zip(
            raw.user.tolist(),
            raw.item.tolist(),
            raw.kind.tolist(),
            ts_ms,
            raw.session.tolist(),
            raw.value.tolist(),
            raw.first_view.tolist(),
            strict=True,
        )
    ):
        ctx = contexts.get((s, first))
        if ctx is None:
            if s >= 0:
                device, sid = DEVICE_NAMES[int(sess.device[s])], sess_ids[s]
            else:  # a rating on a later visit, from the user's usual device
                device, sid = DEVICE_NAMES[int(users.device[u])], f"{user_ids[u]}-r{-1 - s:05d}"
            ctx = contexts[(s, first)] = Context(
                device=device,
                locale=LOCALES[int(users.locale[u])],
                session_id=sid,
                referrer=_REFERRERS[int(sess.referrer[s])] if first and s >= 0 else None,
            )
        events.append(
            Event(
                event_id=_uuid5(f"{prefix}{n}"),
                user_id=user_ids[u],
                item_id=item_ids[i],
                type=_TYPES[kind],
                timestamp=base + timedelta(milliseconds=ms),
                value=None if value != value else value,  # NaN means "no value"
                context=ctx,
            )
        )
    return events
