"""The chart and the services agree on Kafka: KEDA watches the topic and consumer group the
preprocessor really uses under its DEPLOYMENT (computed by the services' own Python), and
topics are created with the replication the chart's values ask for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from scalerec_events.topics import Topic
from scalerec_preprocessor.config import PreprocessorSettings

from tests.charts.helm import RELEASE, Rendered, render, rendered


def _env(r: Rendered, name: str) -> dict[str, str]:
    d = r.get("Deployment", f"{RELEASE}-{name}")
    (c,) = [c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


def _preprocessor_settings(r: Rendered) -> PreprocessorSettings:
    """The settings the preprocessor pod builds from the env the chart gives it."""
    return PreprocessorSettings(**{k.lower(): v for k, v in _env(r, "preprocessor").items()})


def _keda_trigger(r: Rendered) -> dict[str, Any]:
    (so,) = r.of_kind("ScaledObject")
    (trigger,) = so["spec"]["triggers"]
    return dict(trigger["metadata"])


def test_keda_watches_what_the_prod_preprocessor_consumes() -> None:
    r = rendered("prod-gpu")
    settings = _preprocessor_settings(r)
    assert settings.deployment == "prod"
    trigger = _keda_trigger(r)
    assert trigger["topic"] == settings.topic(Topic.EVENTS_RAW) == "prod.events.raw.v1"
    assert trigger["consumerGroup"] == settings.stream_group("events") == "prod.preprocessor.events"


BACKENDS: dict[str, Any] = {
    "kafka": {"bootstrap": "k:9092"},
    "hbase": {"thrift": "hb:9090"},
    "persistence": {"data": {"shared": False}},
}


def _render(tmp_path: Path, values: dict[str, Any]) -> Rendered:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return render(["-f", str(path)])


@pytest.mark.parametrize(
    "values",
    [
        {},  # no DEPLOYMENT, no CONSUMER_GROUP: the settings' defaults on both sides
        {"components": {"preprocessor": {"env": {"DEPLOYMENT": "eu1", "CONSUMER_GROUP": "pp"}}}},
        {"default": {"env": {"DEPLOYMENT": "{{ .Release.Namespace }}"}}},  # env values are tpl'd for both
    ],
    ids=["defaults", "component-env", "templated"],
)
def test_keda_follows_deployment_and_consumer_group_wherever_they_are_set(
    tmp_path: Path, values: dict[str, Any]
) -> None:
    keda = {"components": {"preprocessor": {"keda": {"enabled": True}}}}
    r = _render(tmp_path, _merge(_merge(BACKENDS, keda), values))
    settings = _preprocessor_settings(r)
    trigger = _keda_trigger(r)
    assert trigger["topic"] == settings.topic(Topic.EVENTS_RAW)
    assert trigger["consumerGroup"] == settings.stream_group("events")
    if not values:
        assert (trigger["topic"], trigger["consumerGroup"]) == (
            "scalerec.events.raw.v1",
            "scalerec.preprocessor.events",
        )


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
