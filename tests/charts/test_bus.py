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


def _kafka_bus(bus_url: str) -> Any:
    from scalerec_adapters.factory import make_bus

    return make_bus(bus_url, partitions=24, client_id="test")


def test_prod_topics_are_created_replicated_with_min_insync_replicas() -> None:
    r = rendered("prod-gpu")
    settings = _preprocessor_settings(r)
    for name in ("collector", "preprocessor", "trainer", "ranker", "evaluator"):
        assert _env(r, name)["BUS_URL"] == settings.bus_url, f"{name}: every service creates topics alike"
    bus = _kafka_bus(settings.bus_url)  # what the service's Backends.open builds from BUS_URL
    assert (bus.replication_factor, bus.min_insync_replicas, bus.compression_type) == (3, 2, "lz4")
    created = {t.name: t for t in bus.new_topics(settings.topics())}
    assert set(created) == {s.name for s in settings.topics()}
    for t in created.values():
        assert t.replication_factor == 3 and t.topic_configs["min.insync.replicas"] == "2", t.name
    assert created["prod.models.promoted.v1"].topic_configs["cleanup.policy"] == "compact"
    assert created["prod.events.raw.v1"].num_partitions == 24


def test_a_single_broker_kafka_takes_one_replica(tmp_path: Path) -> None:
    values = _merge(BACKENDS, {"kafka": {"replicationFactor": 1, "minInsyncReplicas": 1, "compression": "none"}})
    bus = _kafka_bus(_env(_render(tmp_path, values), "ranker")["BUS_URL"])
    (topic,) = bus.new_topics(_preprocessor_settings(_render(tmp_path, values)).topics()[:1])
    assert topic.replication_factor == 1 and bus.compression_type == "none"


def test_min_insync_replicas_above_the_replication_factor_does_not_render(tmp_path: Path) -> None:
    from tests.charts.helm import run_helm, template_args

    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(_merge(BACKENDS, {"kafka": {"replicationFactor": 2, "minInsyncReplicas": 3}})))
    proc = run_helm(template_args(["-f", str(path)]), check=False)
    assert proc.returncode != 0 and "minInsyncReplicas" in proc.stderr


def test_every_component_keeps_bus_copies_for_the_same_retention(tmp_path: Path) -> None:
    """Each service applies BUS_RETENTION_HOURS to the topics when it starts: they must all agree,
    or the last one started decides how long an erased user's events stay on the bus."""
    r = _render(tmp_path, {**BACKENDS, "kafka": {"bootstrap": "k:9092", "retentionHours": 36}})
    names = [d["metadata"]["name"].removeprefix(f"{RELEASE}-") for d in r.of_kind("Deployment")]
    assert "preprocessor" in names and "collector" in names
    for name in names:
        env = _env(r, name)
        assert env["BUS_RETENTION_HOURS"] == "36", name
    settings = _preprocessor_settings(r)
    specs = {t.name: t for t in settings.topics()}
    assert specs[settings.topic(Topic.EVENTS_RAW)].retention_ms == 36 * 3600_000
    assert specs[settings.topic(Topic.MODELS_PROMOTED)].retention_ms is None  # compacted: the champion stays
