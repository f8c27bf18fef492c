"""Feature definitions shared by the preprocessor (training examples) and the ranker (serving).

Training and serving call the same functions, so they cannot drift apart.  Bump
``FEATURE_VERSION`` whenever an output changes: it is part of every model card
and of the cache keys, so a model never sees features of another version.
"""

from scalerec_features.definitions import (
    CONTEXT_CARDINALITIES,
    CONTEXT_FIELDS,
    DEVICES,
    FEATURE_VERSION,
    HISTORY_LEN,
    ITEM_FEATURE_CARDINALITIES,
    ITEM_FEATURE_LEN,
    TEXT_TOKENS,
    Device,
    context_features,
    context_vector,
    item_feature_vector,
    price_bucket,
    stable_hash,
    tokenize,
)

__all__ = [
    "CONTEXT_CARDINALITIES",
    "CONTEXT_FIELDS",
    "DEVICES",
    "FEATURE_VERSION",
    "HISTORY_LEN",
    "ITEM_FEATURE_CARDINALITIES",
    "ITEM_FEATURE_LEN",
    "TEXT_TOKENS",
    "Device",
    "context_features",
    "context_vector",
    "item_feature_vector",
    "price_bucket",
    "stable_hash",
    "tokenize",
]
