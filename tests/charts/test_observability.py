"""ServiceMonitors and the Grafana dashboard ConfigMap: off by default, complete when on."""

from __future__ import annotations

import json

from tests import dashboard
from tests.charts.helm import rendered

SERVICES = {"collector", "preprocessor", "trainer", "ranker", "evaluator"}


def test_monitoring_objects_are_off_by_default() -> None:
    objects = rendered("defaults").objects
    assert not [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert not [o for o in objects if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"]]


def test_every_component_gets_a_service_monitor_on_its_metrics_endpoint() -> None:
    out = rendered("everything")
    monitors = {o["metadata"]["labels"]["app.kubernetes.io/component"]: o for o in out.of_kind("ServiceMonitor")}
    assert SERVICES | {"triton"} <= set(monitors)
    services = {o["metadata"]["labels"]["app.kubernetes.io/component"]: o for o in out.of_kind("Service")}
    for name, monitor in monitors.items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        # The port it names exists on the Service it selects.
        selector = monitor["spec"]["selector"]["matchLabels"]
        service = services[name]
        assert selector.items() <= service["metadata"]["labels"].items()
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["port"] == ("metrics" if name == "triton" else "http")


def test_scrapers_may_reach_the_metrics_port_through_the_network_policy() -> None:
    out = rendered("everything")
    for policy in out.of_kind("NetworkPolicy"):
        name = policy["metadata"]["labels"]["app.kubernetes.io/component"]
        if name not in SERVICES:
            continue
        rules = policy["spec"]["ingress"]
        scrape = [r for r in rules if r.get("from") and r["from"][0].get("namespaceSelector")]
        assert scrape, f"{name}: no ingress rule for Prometheus"
        assert scrape[0]["ports"] == [{"port": "http", "protocol": "TCP"}]
        assert scrape[0]["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}


def test_the_dashboard_ships_as_a_config_map_grafana_picks_up() -> None:
    (config_map,) = [
        o for o in rendered("everything").of_kind("ConfigMap") if o["metadata"]["name"].endswith("-dashboards")
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(config_map["data"]["scalerec.json"])
    assert shipped == dashboard.load()
    assert shipped["uid"] and shipped["panels"]
    for panel in shipped["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert dashboard.metric_names(target["expr"]), f"{panel['title']}: queries no metric"
    # The series the issue asks for all have a panel (tests/e2e/test_metrics.py scrapes them for real).
    names = dashboard.all_metric_names()
    for wanted in (
        "http_server_request_duration_seconds_bucket",
        "scalerec_ranker_recommendations_total",
        "scalerec_ranker_model_version",
        "scalerec_bus_consumer_lag",
        "scalerec_bus_messages_dead_lettered_total",
        "scalerec_preprocessor_events_stored_total",
        "scalerec_trainer_loss",
        "scalerec_trainer_job_duration_seconds_count",
    ):
        assert wanted in names
