"""The impression contract: what the ranker publishes is exactly what the evaluator stores and counts."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from scalerec_adapters.bus import Message
from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_evaluator.consumers.online import OnlineRecorder
from scalerec_evaluator.results import online_by_version
from scalerec_events.models import Context, Event, ImpressedItem, Impression
from scalerec_events.topics import Topic, topic_name
from scalerec_ranker.recommend import Recommendation, Recommended, impression_payload
from scalerec_storage import schema as s

IMPRESSIONS = topic_name(Topic.IMPRESSIONS)
EVENTS = topic_name(Topic.EVENTS_RAW)


def _rec(request_id: str, version: int | None, fallback: bool, n: int) -> Recommendation:
    items = [Recommended(f"i{j}", 1.0 - j / 10, "retrieval", "because") for j in range(n)]
    return Recommendation(request_id, "u1", items, version, fallback, None, "onnxruntime", "cache")


def _store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "store.db")
    store.ensure_tables(s.tables())
    return store


def _feedback(
    n: int, kind: str, request_id: str, value: float | None = None, item: str = "i0", user: str = "u1"
) -> Message:
    ev = Event(
        event_id=f"e{n}",
        user_id=user,
        item_id=item,
        type=kind,
        value=value,
        timestamp=datetime.now(UTC),
        context=Context(request_id=request_id, model_version=3),
    )
    return Message(EVENTS, 0, 100 + n, b"u1", ev.model_dump_json().encode())


@pytest.mark.parametrize(
    ("rec", "device", "locale"),
    [
        (_rec("r1", 3, False, 5), "mobile", "en-US"),
        (_rec("r2", None, True, 0), None, None),
        (_rec("r3", 3, False, 2), None, "de-DE"),
        (
            Recommendation(
                "r4",
                "u9",
                [Recommended("i1", float("nan"), "trending", "Popular right now")],
                4,
                True,
                "onnxruntime unavailable; scored by triton",
                "triton",
                "store",
                variant="challenger",
                experiment_id="exp-1",
            ),
            "desktop",
            None,
        ),
    ],
)
def test_impression_payload_is_the_models_json(rec: Recommendation, device: str | None, locale: str | None) -> None:
    """The payload is built without the model (it is on the request path): it must say what the model would."""
    payload = impression_payload(rec, device, locale)
    parsed = Impression.model_validate_json(payload)
    expected = Impression(
        request_id=rec.request_id,
        user_id=rec.user_id,
        model_version=rec.model_version,
        experiment_id=rec.experiment_id,
        variant=rec.variant,
        fallback=rec.fallback,
        fallback_reason=rec.fallback_reason,
        scorer=rec.scorer,
        items=[
            ImpressedItem(
                item_id=i.item_id, position=n, source=i.source, score=None if math.isnan(i.score) else i.score
            )
            for n, i in enumerate(rec.items)
        ],
        context=Context(device=device, locale=locale),
        ts_ms=parsed.ts_ms,
    )
    assert parsed == expected
    assert abs(parsed.ts_ms - time.time() * 1000) < 60_000


async def test_ranker_impressions_are_valid_models_the_evaluator_counts(tmp_path: Path) -> None:
    payloads = [
        impression_payload(_rec("r1", 3, False, 5), "mobile", "en-US"),
        impression_payload(_rec("r2", 3, False, 4), None),
        impression_payload(_rec("r3", None, True, 2), "desktop"),
    ]
    parsed = Impression.model_validate_json(payloads[0])  # validated, not just JSON
    assert parsed.model_version == 3 and [i.position for i in parsed.items] == [0, 1, 2, 3, 4]
    assert parsed.context.device == "mobile" and parsed.items[0].source == "retrieval"

    store = _store(tmp_path)
    online = OnlineRecorder(store, impressions_topic=IMPRESSIONS)
    messages = [Message(IMPRESSIONS, 0, n, b"u1", p) for n, p in enumerate(payloads)]
    broken = Message(IMPRESSIONS, 0, 9, b"u1", b'{"request_id": "x"}')
    result = await online.handle([*messages, broken])
    await online.handle(messages)  # re-delivered: stored once
    summary = online_by_version(store, 3_600_000)
    assert summary["model_v3"].requests == 2 and summary["model_v3"].impressions == 9
    assert summary["baseline"].requests == 1
    assert [m.offset for m, _ in result.poison] == [9]  # an impression that is not one goes to the DLQ


async def test_online_conversions_are_the_ones_the_model_is_trained_on(tmp_path: Path) -> None:
    store = _store(tmp_path)
    online = OnlineRecorder(store, impressions_topic=IMPRESSIONS)
    feedback = [
        _feedback(n, kind, "r1", value)
        for n, (kind, value) in enumerate([("purchase", None), ("rating", 5.0), ("rating", 2.0), ("click", None)])
    ]
    # Feedback before its impression (two topics, no order between them): it waits, then joins.
    await online.handle(feedback)
    assert online.pending == 4
    await online.handle([Message(IMPRESSIONS, 0, 1, b"u1", impression_payload(_rec("r1", 3, False, 3), None))])
    assert online.pending == 0
    await online.handle(feedback)  # re-delivered after the join: still counted once
    v3 = online_by_version(store, 3_600_000)["model_v3"]
    # A purchase and a rating of 5 convert (scalerec_events.labels.is_conversion); a rating of 2 does not.
    assert (v3.requests, v3.clicks, v3.conversions, v3.ctr, v3.conversion_rate) == (1, 1, 2, 1.0, 1.0)


async def test_feedback_outside_the_attribution_window_does_not_count(tmp_path: Path) -> None:
    store = _store(tmp_path)
    online = OnlineRecorder(store, impressions_topic=IMPRESSIONS)
    old = Impression(request_id="r9", user_id="u1", model_version=3, ts_ms=int(time.time() * 1000) - 7_200_000)
    await online.handle([Message(IMPRESSIONS, 0, 1, b"u1", old.model_dump_json().encode())])
    await online.handle([_feedback(1, "click", "r9")])
    assert online_by_version(store, 3_600_000)["model_v3"].clicks == 0
    assert online_by_version(store, 3 * 3_600_000)["model_v3"].clicks == 1


async def test_feedback_from_another_user_naming_a_request_does_not_count(tmp_path: Path) -> None:
    """A request id is in every answer: twenty "strangers" posting clicks with one challenger answer's id
    raised that variant's clicks by twenty."""
    store = _store(tmp_path)
    online = OnlineRecorder(store, impressions_topic=IMPRESSIONS)
    await online.handle([Message(IMPRESSIONS, 0, 1, b"u1", impression_payload(_rec("r1", 3, False, 3), None))])
    strangers = [_feedback(n, "click", "r1", user=f"stranger{n}") for n in range(20)]
    await online.handle([*strangers, _feedback(99, "click", "r1")])
    v3 = online_by_version(store, 3_600_000)["model_v3"]
    assert (v3.requests, v3.clicks) == (1, 1)


async def test_waiting_feedback_is_resolved_by_the_impressions_that_arrive_not_by_a_scan_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch scanned and parsed the whole table of feedback waiting for its impression once anything
    waited: with 80,000 rows of clicks naming request ids that never come (anyone with an ingest key can
    send them, and they stay a day) each batch cost 0.8 s."""
    store = _store(tmp_path)
    online = OnlineRecorder(store, impressions_topic=IMPRESSIONS)
    await online.handle([_feedback(n, "click", f"never-{n}") for n in range(50)] + [_feedback(60, "click", "r1")])
    assert online.pending == 51
    scans: list[bytes | None] = []
    scan = store.scan

    def counted(table: str, *a: object, **kw: object) -> object:
        if table == s.PENDING_FEEDBACK:
            scans.append(kw.get("prefix"))  # type: ignore[arg-type]
        return scan(table, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "scan", counted)
    await online.handle([Message(IMPRESSIONS, 0, 2, b"u2", impression_payload(_rec("r9", 3, False, 3), None))])
    assert scans == []  # nothing waited for r9
    await online.handle([_feedback(61, "click", "r1")])  # waits too (no sweep): counted
    assert online.pending == 52 and scans == []
    await online.handle([Message(IMPRESSIONS, 0, 1, b"u1", impression_payload(_rec("r1", 3, False, 3), None))])
    assert scans == [b"r1" + s.SEP]  # only r1's rows
    assert online.pending == 50
    v3 = online_by_version(store, 3_600_000)["model_v3"]
    assert (v3.requests, v3.clicks) == (2, 2)
    monkeypatch.setattr("scalerec_evaluator.consumers.online.PENDING_SWEEP_S", 0.0)
    await online.handle([_feedback(70, "click", "r9")])  # a sweep: the whole table, now and then
    assert scans[-1] is None and online.pending == 50
