"""charts/scalerec-stack: Kafka, HBase and Memcached from well-known charts, off by default.

Its dependencies cannot be fetched here (no chart repositories), so this checks the
wiring: conditions, defaults, and that the app chart renders the stack's endpoint
values (templates that name the stack's release) into BUS_URL/STORE_URL/CACHE_URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.charts.helm import CHART, REPO, render

STACK = REPO / "charts" / "scalerec-stack"


def _load(path: str) -> Any:
    return yaml.safe_load((STACK / path).read_text())


def test_backends_are_condition_gated_and_off_by_default() -> None:
    chart = _load("Chart.yaml")
    values = _load("values.yaml")
    deps = {d["name"]: d for d in chart["dependencies"]}
    assert set(deps) == {"scalerec", "kafka", "memcached", "hbase"}
    for name in ("kafka", "memcached", "hbase"):
        assert deps[name]["condition"] == f"{name}.enabled"
        assert values[name]["enabled"] is False
    app = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert deps["scalerec"]["repository"] == "file://../scalerec"
    assert deps["scalerec"]["version"] == app["version"]
    assert "dependencies" not in app, "the app chart must stay renderable offline"


def test_in_cluster_values_point_the_app_at_the_stacks_backends(tmp_path: Path) -> None:
    in_cluster = _load("values-in-cluster.yaml")
    for name in ("kafka", "memcached", "hbase"):
        assert in_cluster[name]["enabled"] is True
    # What the umbrella passes down to its `scalerec` subchart (same release name).
    app_values = tmp_path / "app-values.yaml"
    app_values.write_text(yaml.safe_dump(in_cluster["scalerec"]))
    r = render(["-f", str(app_values)])
    ranker = r.get("Deployment", "scalerec-ranker")
    env = {e["name"]: e.get("value") for e in ranker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["BUS_URL"].split("?")[0] == "kafka://scalerec-kafka:9092"
    assert env["STORE_URL"].startswith("hbase://scalerec-hbase-thrift:9090")
    # One address per Memcached pod (StatefulSet pod DNS names through its headless Service),
    # as many as the stack runs: consistent hashing must see every node.
    replicas = in_cluster["memcached"]["replicaCount"]
    assert in_cluster["memcached"]["architecture"] == "high-availability"  # a StatefulSet, stable pod names
    assert in_cluster["memcached"]["service"]["clusterIP"] == "None"  # headless: pod DNS records exist
    pods = [f"scalerec-memcached-{i}.scalerec-memcached:11211" for i in range(replicas)]
    assert replicas == 3 and env["CACHE_URL"] == "memcached://" + ",".join(pods)
    # Keys: without them every service exits at start (AUTH is on); the documented install made none.
    for name in ("collector", "preprocessor", "trainer", "ranker", "evaluator"):
        container = r.get("Deployment", f"scalerec-{name}")["spec"]["template"]["spec"]["containers"][0]
        keys = next(e for e in container["env"] if e["name"] == "API_KEYS")
        assert keys["valueFrom"]["secretKeyRef"] == {"name": "scalerec-api-keys", "key": "api-keys"}, name


def _image_repositories(values: Any, path: str = "") -> dict[str, str]:
    """Every image.repository (or any key named repository) in a values tree, by path."""
    out: dict[str, str] = {}
    if isinstance(values, dict):
        for k, v in values.items():
            where = f"{path}.{k}" if path else str(k)
            if k == "repository" and isinstance(v, str):
                out[where] = v
            else:
                out.update(_image_repositories(v, where))
    return out


def test_bitnami_images_come_from_the_legacy_repositories_that_still_publish_their_tags() -> None:
    values = _load("values.yaml")
    for name in ("kafka", "memcached"):
        image = values[name]["image"]
        assert (image["registry"], image["repository"]) == ("docker.io", f"bitnamilegacy/{name}"), name
        assert "tag" not in image, "keep the subchart's own pinned tag: the legacy repository has the same tags"
    # The charts' image check trusts only docker.io/bitnami/*: without this they refuse to render.
    assert values["global"]["security"]["allowInsecureImages"] is True
    for f in ("values.yaml", "values-in-cluster.yaml"):
        for where, repo in _image_repositories(_load(f)).items():
            assert not repo.startswith("bitnami/"), f"{f}: {where}={repo} is no longer published"
    readme = (STACK / "README.md").read_text()
    assert "bitnamilegacy" in readme and "allowInsecureImages" in readme
