"""Day two: `helm upgrade` with changed values rolls the Deployments out (new ReplicaSets, pods with the
new env, the new replica count), and `helm rollback` brings the first revision's objects back. On its
own release of the dev example, so the other tests read releases nobody changes under them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster.conftest import install
from tests.cluster.kube import Cluster, Release, poll_until, rolled_out


@pytest.fixture(scope="module")
def upgradable(cluster: Cluster) -> Release:
    return install(cluster, "scalerec-upgrade", "dev")


def _pods_env(release: Release, var: str) -> dict[str, set[str]]:
    """Per component, the values of one env var across its live pods."""
    out: dict[str, set[str]] = {}
    for p in release.pods():
        component = p["metadata"]["labels"]["app.kubernetes.io/component"]
        (c,) = [c for c in p["spec"]["containers"] if c["name"] == component]
        out.setdefault(component, set()).update(e.get("value", "") for e in c.get("env", []) if e["name"] == var)
    return out


def _settled(release: Release, collectors: int) -> bool:
    """Rolled out (old ReplicaSets' pods gone) with that many collector replicas."""
    collector = release.cluster.get("deployments", release.namespace, "scalerec-collector")
    return collector["spec"]["replicas"] == collectors and rolled_out(release)


def _history(release: Release) -> list[dict[str, Any]]:
    return list(json.loads(release.helm("history", release.name, "-o", "json").stdout))


def _log_id_key(release: Release) -> tuple[str, set[str]]:
    """The chart's LOG_ID_KEY Secret data as the cluster holds it, and the pods' checksums of it."""
    secret = release.cluster.get("secrets", release.namespace, "scalerec-log-id-key")
    sums = {
        (d["spec"]["template"]["metadata"].get("annotations") or {}).get("checksum/log-id-key", "")
        for d in release.deployments()
        if d["metadata"]["labels"]["app.kubernetes.io/component"] != "triton"
    }
    return secret["data"]["log-id-key"], sums


def test_upgrade_with_changed_values_then_rollback(upgradable: Release) -> None:
    r = upgradable
    # The random LOG_ID_KEY made at install: kept by every upgrade and rollback (lookup), or the
    # services' log lines about one user could not be joined across a release.
    key, sums = _log_id_key(r)
    assert len(sums) == 1 and "" not in sums, sums
    assert _pods_env(r, "LOG_LEVEL") and all(v == {"DEBUG"} for v in _pods_env(r, "LOG_LEVEL").values())
    before = {
        d["metadata"]["name"]: d["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        for d in r.deployments()
    }

    changed = ["--set", "components.collector.replicas=2", "--set", "default.env.LOG_LEVEL=INFO"]
    r.helm("upgrade", r.name, "charts/scalerec", *r.value_args(), *changed, "--wait", "--timeout", "5m")
    poll_until("the upgrade rolled out", lambda: _settled(r, 2), timeout=120)
    assert all(v == {"INFO"} for v in _pods_env(r, "LOG_LEVEL").values()), _pods_env(r, "LOG_LEVEL")
    after = {
        d["metadata"]["name"]: d["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        for d in r.deployments()
    }
    assert all(int(after[n]) > int(before[n]) for n in before), (before, after)
    assert [(h["revision"], h["status"]) for h in _history(r)] == [(1, "superseded"), (2, "deployed")]
    assert _log_id_key(r) == (key, sums)

    r.helm("rollback", r.name, "1", "--wait", "--timeout", "5m")
    poll_until("the rollback rolled out", lambda: _settled(r, 1), timeout=120)
    assert all(v == {"DEBUG"} for v in _pods_env(r, "LOG_LEVEL").values()), _pods_env(r, "LOG_LEVEL")
    history = _history(r)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "superseded"), (3, "deployed")]
    assert history[-1]["description"] == "Rollback to 1"
    assert _log_id_key(r) == (key, sums)
