"""The impression contract: what the ranker publishes is exactly what the evaluator counts."""

from __future__ import annotations

from scalerec_adapters.bus import Message
from scalerec_evaluator.consumers.online import OnlineMetrics
from scalerec_events.models import Impression
from scalerec_events.topics import Topic, topic_name
from scalerec_ranker.recommend import Recommendation, Recommended, impression_payload


def _rec(request_id: str, version: int | None, fallback: bool, n: int) -> Recommendation:
    items = [Recommended(f"i{j}", 1.0 - j / 10, "retrieval", "because") for j in range(n)]
    return Recommendation(request_id, "u1", items, version, fallback, None, "onnxruntime", "cache")


async def test_ranker_impressions_are_valid_models_the_evaluator_counts() -> None:
    payloads = [
        impression_payload(_rec("r1", 3, False, 5), "mobile", "en-US"),
        impression_payload(_rec("r2", 3, False, 4), None),
        impression_payload(_rec("r3", None, True, 2), "desktop"),
    ]
    parsed = Impression.model_validate_json(payloads[0])  # validated, not just JSON
    assert parsed.model_version == 3 and [i.position for i in parsed.items] == [0, 1, 2, 3, 4]
    assert parsed.context.device == "mobile" and parsed.items[0].source == "retrieval"

    online = OnlineMetrics(impressions_topic=topic_name(Topic.IMPRESSIONS))
    messages = [Message(topic_name(Topic.IMPRESSIONS), 0, n, b"u1", p) for n, p in enumerate(payloads)]
    broken = Message(topic_name(Topic.IMPRESSIONS), 0, 9, b"u1", b'{"request_id": "x"}')
    result = await online.handle([*messages, broken])
    summary = online.summary()
    assert summary["model_v3"]["requests"] == 2 and summary["model_v3"]["impressions"] == 9
    assert summary["baseline"]["requests"] == 1
    assert [m.offset for m, _ in result.poison] == [9]  # an impression that is not one goes to the DLQ


async def test_online_conversions_are_the_ones_the_model_is_trained_on() -> None:
    from datetime import UTC, datetime

    from scalerec_events.models import Context, Event

    online = OnlineMetrics(impressions_topic=topic_name(Topic.IMPRESSIONS))
    feedback = [
        Event(
            event_id=f"e{n}",
            user_id="u1",
            item_id="i0",
            type=kind,
            value=value,
            timestamp=datetime(2026, 1, 1, tzinfo=UTC),
            context=Context(request_id="r1", model_version=3),
        )
        for n, (kind, value) in enumerate([("purchase", None), ("rating", 5.0), ("rating", 2.0), ("click", None)])
    ]
    messages = [
        Message(topic_name(Topic.EVENTS_RAW), 0, n, b"u1", e.model_dump_json().encode()) for n, e in enumerate(feedback)
    ]
    await online.handle(messages)
    # A purchase and a rating of 5 convert (scalerec_events.labels.is_conversion); a rating of 2 does not.
    assert online.summary()["model_v3"]["conversions"] == 2
    assert online.summary()["model_v3"]["clicks"] == 1
