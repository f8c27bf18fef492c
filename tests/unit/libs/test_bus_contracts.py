"""scalerec_events.contracts says who writes and reads each topic; the services' code must agree,
and the published JSON Schemas must accept what the services send."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError
from scalerec_events import experiments as x
from scalerec_events import models as m
from scalerec_events.contracts import CONTRACTS, SERVICES, payload_models
from scalerec_events.topics import Topic

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = ROOT / "docs" / "schemas"


def _topics_in(node: ast.AST) -> set[Topic]:
    return {
        Topic[n.attr]
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "Topic"
    }


def _sources(service: str) -> list[ast.Module]:
    src = ROOT / "services" / service / "src"
    return [ast.parse(p.read_text(), str(p)) for p in sorted(src.rglob("*.py"))]


def _subscribed(service: str) -> set[Topic]:
    """The topics passed to a ConsumerWorker anywhere in the service."""
    found: set[Topic] = set()
    for module in _sources(service):
        for call in ast.walk(module):
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "ConsumerWorker":
                found |= _topics_in(call)
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_consumes_exactly_the_topics_the_registry_says(service: str) -> None:
    declared = {c.topic for c in CONTRACTS if service in c.consumers}
    assert _subscribed(service) == declared


@pytest.mark.parametrize("service", SERVICES)
def test_every_topic_a_service_touches_is_declared_for_it(service: str) -> None:
    mentioned = set().union(*(_topics_in(module) for module in _sources(service)))
    declared = {c.topic for c in CONTRACTS if service in c.consumers or service in c.producers}
    produced = {c.topic for c in CONTRACTS if service in c.producers}
    assert mentioned <= declared, f"{service} uses topics the registry does not give it: {mentioned - declared}"
    assert produced <= mentioned, f"{service} is said to write topics it never names: {produced - mentioned}"


def test_every_topic_has_a_contract_with_a_producer_and_a_consumer() -> None:
    assert [c.topic for c in CONTRACTS] == list(Topic)
    assert all(c.producers and c.consumers for c in CONTRACTS)


NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ONE = {"event_id": "e1", "user_id": "u1", "item_id": "i1"}
SAMPLES: dict[type[BaseModel], BaseModel] = {
    m.Event: m.Event(
        **ONE,
        type=m.EventType.RATING,
        value=4.5,
        timestamp=NOW,
        context=m.Context(device="mobile", locale="de-DE", request_id="r1", model_version=3),
    ),
    m.Item: m.Item(item_id="i1", category="books", price=9.5, attributes={"pages": 300, "new": True}),
    m.ErasureRequest: m.ErasureRequest(request_id="r1", user_id="u1", requested_at=NOW),
    m.TrainingExample: m.TrainingExample(
        **ONE,
        type=m.EventType.PURCHASE,
        ts_ms=1,
        history=["i0"],
        context={"hour": 3},
        item={"category": 2},
        label_click=1,
        label_conversion=1,
    ),
    m.Impression: m.Impression(
        request_id="r1",
        user_id="u1",
        items=[m.ImpressedItem(item_id="i1", position=0, source="retrieval", score=0.5)],
        ts_ms=1,
    ),
    m.ModelAnnouncement: m.ModelAnnouncement(model="scalerec_ranker", version=3, repository="/m", created_at=NOW),
    x.Experiment: x.Experiment(
        experiment_id="exp-1",
        model="scalerec_ranker",
        salt="abc",
        variants=[
            x.ExperimentVariant(name="champion", model_version=1, share=0.5),
            x.ExperimentVariant(name="challenger", model_version=2, share=0.5),
        ],
        created_at=NOW,
        updated_at=NOW,
    ),
}


@pytest.mark.parametrize("model", payload_models(), ids=lambda m: m.__name__)
def test_the_published_schema_accepts_what_producers_send_and_refuses_what_consumers_refuse(
    model: type[BaseModel],
) -> None:
    version = model.model_fields["schema_version"].default
    schema = json.loads((SCHEMAS / f"{model.__name__}.v{version}.json").read_text())
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    sent = json.loads(SAMPLES[model].model_dump_json())
    assert not list(validator.iter_errors(sent))
    extra = {**sent, "unexpected": 1}
    missing = {k: v for k, v in sent.items() if k != schema["required"][0]}
    for refused in (extra, missing):
        assert list(validator.iter_errors(refused))
        with pytest.raises(ValidationError):
            model.model_validate(refused)
