"""The feature functions themselves.  Pure, deterministic, no I/O."""

from __future__ import annotations

import hashlib
import math
import re
from datetime import UTC, datetime
from typing import Literal, get_args

FEATURE_VERSION = 1

# Longest history a model sees (most recent last).
HISTORY_LEN = 50

# The devices a client may name (the events' and the ranker's request models take this type).  The
# feature is the index in DEVICES, 0 for none or unknown: append only, or bump FEATURE_VERSION.
Device = Literal["desktop", "mobile", "tablet", "tv", "other"]
DEVICES: tuple[str, ...] = ("unknown", *get_args(Device))
LOCALE_BUCKETS = 64
CONTEXT_FIELDS = ("hour", "weekday", "device", "locale")
CONTEXT_CARDINALITIES = (24, 7, len(DEVICES), LOCALE_BUCKETS)

CATEGORY_BUCKETS = 4096
PRICE_BUCKETS = 16
TEXT_TOKENS = 8
TOKEN_BUCKETS = 1 << 15
# Item feature vector: [category, price bucket, TEXT_TOKENS hashed title/text tokens]; 0 means "none".
ITEM_FEATURE_LEN = 2 + TEXT_TOKENS
ITEM_FEATURE_CARDINALITIES = (CATEGORY_BUCKETS, PRICE_BUCKETS, *([TOKEN_BUCKETS] * TEXT_TOKENS))

_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = frozenset({"the", "a", "an", "and", "of", "in", "on", "for", "with", "to", "by", "at", "is"})


def stable_hash(text: str, buckets: int) -> int:
    """A bucket in [1, buckets) — 0 is reserved for "missing".  Same on every machine and run."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (buckets - 1)


def context_features(ts_ms: int, device: str | None = None, locale: str | None = None) -> list[int]:
    """[hour of day (UTC), weekday, device id, locale bucket] of a request or event."""
    dt = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    device_id = DEVICES.index(device) if device in DEVICES else 0
    locale_id = stable_hash(locale.lower(), LOCALE_BUCKETS) if locale else 0
    return [dt.hour, dt.weekday(), device_id, locale_id]


def context_vector(context: dict[str, int]) -> list[int]:
    """A context stored by field name (as in a training example) back in model input order."""
    return [int(context.get(k, 0)) for k in CONTEXT_FIELDS]


def price_bucket(price: float | None) -> int:
    """Log-scale price bucket in [1, PRICE_BUCKETS); 0 when unknown."""
    if price is None or price < 0:
        return 0
    return min(PRICE_BUCKETS - 1, 1 + int(math.log2(1.0 + price)))


def tokenize(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOP and len(t) > 1]


def item_feature_vector(category: str | None, price: float | None, title: str = "", text: str = "") -> list[int]:
    """Content features of an item, known before anyone has touched it (cold start)."""
    tokens: list[int] = []
    seen: set[str] = set()
    for tok in tokenize(f"{title} {text}"):
        if tok not in seen:
            seen.add(tok)
            tokens.append(stable_hash(tok, TOKEN_BUCKETS))
        if len(tokens) == TEXT_TOKENS:
            break
    tokens += [0] * (TEXT_TOKENS - len(tokens))
    cat = stable_hash(category.lower(), CATEGORY_BUCKETS) if category and category != "unknown" else 0
    return [cat, price_bucket(price), *tokens]
