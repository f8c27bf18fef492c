"""Helm values -> pod env -> settings: every env name a scalerec container gets must be
a field of that service's settings class (the classes ignore unknown names, so a typo
such as BUSURL would otherwise be dropped silently), and the values must validate."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from tests.charts.helm import SCENARIOS, Rendered, pod_spec, render, rendered

SERVICES = ("collector", "preprocessor", "trainer", "ranker", "evaluator")
# Set by the chart for torchrun in training pods, read by the launcher, not by settings.
LAUNCHER_ENV = {"JOB_NAME", "NODE_RANK"}
# Libraries' own variables a trainer may legitimately be given.
LIBRARY_PREFIXES = ("NCCL_", "TORCH_", "PYTORCH_", "CUDA_", "OMP_")


def settings_class(service: str) -> type[BaseSettings]:
    module = importlib.import_module(f"scalerec_{service}.config")
    classes = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, BaseSettings) and c.__module__ == module.__name__
    ]
    assert len(classes) == 1, f"scalerec_{service}.config must define one settings class, has {classes}"
    return classes[0]


def service_containers(r: Rendered) -> list[tuple[str, str, dict[str, Any]]]:
    """(workload name, service, container) for every container running a scalerec service."""
    out = []
    for obj in r.objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        for c in spec["containers"]:
            if c["name"] in SERVICES:
                out.append((obj["metadata"]["name"], c["name"], c))
    return out


@pytest.mark.parametrize("scenario_name", list(SCENARIOS))
def test_env_names_are_settings_fields(scenario_name: str) -> None:
    r = rendered(scenario_name)
    containers = service_containers(r)
    assert {s for _, s, _ in containers} == set(SERVICES)
    for workload, service, c in containers:
        fields = {name.upper() for name in settings_class(service).model_fields}
        batch = workload not in {d["metadata"]["name"] for d in r.of_kind("Deployment")}
        for e in c.get("env", []):
            name = e["name"]
            if batch and (name in LAUNCHER_ENV or name.startswith(LIBRARY_PREFIXES)):
                continue
            assert name in fields, f"{scenario_name}: {workload}/{service} gets {name}, not a {service} setting"


@pytest.mark.parametrize("scenario_name", list(SCENARIOS))
def test_rendered_env_builds_valid_settings(scenario_name: str) -> None:
    for workload, service, c in service_containers(rendered(scenario_name)):
        values = {e["name"].lower(): e["value"] for e in c.get("env", []) if "value" in e}
        values = {k: v for k, v in values.items() if k.upper() not in LAUNCHER_ENV}
        settings = settings_class(service)(**values)  # raises on a bad value (e.g. MODEL_SIZE=huge)
        http = [p["containerPort"] for p in c.get("ports", []) if p["name"] == "http"]
        if http:  # the service listens where the Service and probes expect it
            assert settings.model_dump()["port"] == http[0], f"{workload}/{service}"
            assert settings.model_dump()["host"] == "0.0.0.0", f"{workload}/{service} must listen on all interfaces"


def test_a_misspelt_env_name_is_caught() -> None:
    r = render(["--set", "components.collector.env.BUSURL=kafka://k:9092"])
    (collector,) = [c for w, s, c in service_containers(r) if s == "collector"]
    names = {e["name"] for e in collector["env"]}
    assert "BUSURL" in names
    fields = {n.upper() for n in settings_class("collector").model_fields}
    assert "BUSURL" not in fields  # the check above would have failed on it


def test_backends_render_into_urls() -> None:
    r = render(
        [
            "--set",
            "kafka.bootstrap=k1:9092\\,k2:9092",
            "--set",
            "hbase.thrift=hb:9090",
            "--set",
            "memcached.servers={m1:11211,m2:11211}",
            "--set",
            "persistence.data.shared=false",
        ]
    )
    for _, service, c in service_containers(r):
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["BUS_URL"].split("?")[0] == "kafka://k1:9092,k2:9092"
        # The ranker's Thrift calls time out within a second or so of its request budget, not after 15 s.
        ranker = "&timeout_ms=1000" if service == "ranker" else ""
        assert env["STORE_URL"] == f"hbase://hb:9090?pool=8{ranker}"
        assert env["CACHE_URL"] == "memcached://m1:11211,m2:11211"


def test_component_env_overrides_generated_and_default_env() -> None:
    r = render(
        [
            "--set",
            "kafka.bootstrap=k:9092",
            "--set",
            "components.ranker.env.BUS_URL=kafka://other:9092",
            "--set",
            "default.env.LOG_LEVEL=WARNING",
        ]
    )
    (ranker,) = [c for _, s, c in service_containers(r) if s == "ranker"]
    env = [e["name"] for e in ranker["env"]]
    assert len(env) == len(set(env)), "each env name once"
    values = {e["name"]: e.get("value") for e in ranker["env"]}
    assert values["BUS_URL"] == "kafka://other:9092" and values["LOG_LEVEL"] == "WARNING"


def test_memcached_statefulset_pods_are_addressed_one_by_one() -> None:
    r = render(
        [
            "--set",
            "memcached.servers={ext:11211}",
            "--set",
            "memcached.statefulSet.name=scalerec-mc",
            "--set",
            "memcached.statefulSet.service=mc-headless",
            "--set",
            "memcached.statefulSet.replicas=2",
        ]
    )
    (ranker,) = [c for _, s, c in service_containers(r) if s == "ranker"]
    env = {e["name"]: e.get("value") for e in ranker["env"]}
    assert env["CACHE_URL"] == "memcached://ext:11211,scalerec-mc-0.mc-headless:11211,scalerec-mc-1.mc-headless:11211"
