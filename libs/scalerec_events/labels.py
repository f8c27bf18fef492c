"""What counts as a conversion: the one definition behind every conversion label and metric.

The preprocessor labels training examples with it, the trainer's conversion head
learns it (``scalerec_models.data.Interactions.conversion``, the same rule over
arrays) and the evaluator's online conversion rate counts it, so the model is
trained for exactly what it is measured on.
"""

from __future__ import annotations

from scalerec_events.models import CONVERSION_TYPES, EventType

__all__ = ["CONVERSION_RATING", "CONVERSION_TYPES", "is_conversion"]

# A rating this high converts too: rating-only data (MovieLens) has no purchases, and a
# user who rates an item 4 or 5 of 5 has acted on it as surely as one who bought it.
CONVERSION_RATING = 4.0


def is_conversion(type: EventType | str, value: float | None) -> bool:
    """True when an event of this type and value is a conversion (add to cart, purchase, rating >= 4)."""
    # EventType is a StrEnum: a plain "purchase" and EventType.PURCHASE are equal and hash alike.
    if type in CONVERSION_TYPES:
        return True
    return type == EventType.RATING and value is not None and value >= CONVERSION_RATING
