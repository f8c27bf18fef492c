"""Talk to the control plane that scripts/cluster/cluster.sh runs: kubectl and helm with its
kubeconfig, JSON in and out, and polling until the controllers have done their part.

kubectl (/usr/bin/kubectl) and helm (tests/charts/helm.py finds it) are the clients a user has;
going through them also exercises the kubeconfig the script writes.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.charts.helm import CHART, EXAMPLES, REPO, helm_binary

CLUSTER_SH = REPO / "scripts" / "cluster" / "cluster.sh"
RELEASE = "scalerec"
T = TypeVar("T")


def cluster_sh(*args: str, timeout: float = 3600) -> str:
    """Run the script; its first `up` on a machine builds the binaries (minutes), hence the timeout."""
    proc = subprocess.run(["bash", str(CLUSTER_SH), *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(
            f"cluster.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}", pytrace=False
        )
    return proc.stdout


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", "--request-timeout=30s", *args],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=120,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}", pytrace=False)
        return proc

    def get(self, kind: str, namespace: str | None = None, name: str | None = None) -> Any:
        """One object (with name) or the list of items, as the API server returns them."""
        ns = ["-n", namespace] if namespace else []
        out = json.loads(self.kubectl("get", kind, *([name] if name else []), *ns, "-o", "json").stdout)
        return out if name else out["items"]

    def get_all(self, kind: str) -> list[Any]:
        """Every object of that kind in every namespace."""
        return list(json.loads(self.kubectl("get", kind, "--all-namespaces", "-o", "json").stdout)["items"])

    def apply(self, objects: Sequence[dict[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))

    def helm(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [helm_binary(), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}", pytrace=False)
        return proc


def poll_until(what: str, check: Callable[[], T | None], timeout: float = 120, interval: float = 1.0) -> T:
    """check() until it returns something truthy; fail with `what` and its last answer otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f}s (last: {last!r})", pytrace=False)
        time.sleep(interval)


# -- releases ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """A `helm install` of charts/scalerec in its own namespace."""

    cluster: Cluster
    namespace: str
    example: str
    values: tuple[Path, ...]

    @property
    def name(self) -> str:
        return RELEASE

    def objects(self, kind: str) -> list[dict[str, Any]]:
        return list(self.cluster.get(kind, self.namespace))

    def deployments(self) -> list[dict[str, Any]]:
        return self.objects("deployments")

    def pods(self) -> list[dict[str, Any]]:
        return [p for p in self.objects("pods") if p["metadata"].get("deletionTimestamp") is None]

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.helm(*args, "--namespace", self.namespace, check=check)

    def value_args(self) -> list[str]:
        return [a for v in self.values for a in ("-f", str(v))]


def example_values(example: str) -> Path:
    return EXAMPLES / example / "values.yaml"


def rendered_claims(cluster: Cluster, namespace: str, values: Sequence[Path]) -> list[dict[str, Any]]:
    """The PersistentVolumeClaims the chart will create in that namespace with those values."""
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    out = cluster.helm(*args, *[a for v in values for a in ("-f", str(v))]).stdout
    return [o for o in yaml.safe_load_all(out) if o and o["kind"] == "PersistentVolumeClaim"]


def provision_volumes(cluster: Cluster, namespace: str, claims: Sequence[dict[str, Any]], root: Path) -> None:
    """Static provisioning, as an administrator without a dynamic provisioner does it: one PersistentVolume
    per claim the release will make, reserved for it by claimRef, with its class, size and access modes.
    The real PV controller binds them when helm creates the claims; the pods, which the scheduler
    holds back while their claims are unbound, then schedule. (kwok nodes mount nothing: the hostPath
    only has to be valid.)"""
    pvs = []
    for claim in claims:
        name = claim["metadata"]["name"]
        spec = claim["spec"]
        pvs.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{namespace}-{name}", "labels": {"scalerec.dev/namespace": namespace}},
                "spec": {
                    "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                    "accessModes": spec["accessModes"],
                    "storageClassName": spec.get("storageClassName", ""),
                    "persistentVolumeReclaimPolicy": "Retain",
                    "claimRef": {"namespace": namespace, "name": name},
                    "hostPath": {"path": str(root / namespace / name), "type": "DirectoryOrCreate"},
                },
            }
        )
    if pvs:
        cluster.apply(pvs)


def fresh_namespace(cluster: Cluster, namespace: str) -> None:
    """Delete what an earlier run left (its release, claims, volumes), then create the namespace."""
    cluster.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=true", "--timeout=120s")
    cluster.kubectl("delete", "pv", "-l", f"scalerec.dev/namespace={namespace}", "--ignore-not-found")
    cluster.kubectl("create", "namespace", namespace)


def deployment_env(deployment: dict[str, Any], container: str | None = None) -> dict[str, str]:
    """The literal env of a Deployment's main container (the one named after its component)."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    name = container or deployment["metadata"]["labels"]["app.kubernetes.io/component"]
    (c,) = [c for c in containers if c["name"] == name]
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in obj.get("status", {}).get("conditions", []) or []:
        if c["type"] == kind:
            return dict(c)
    return None


def rolled_out(release: Release) -> bool:
    """Every Deployment at its current template with all replicas ready, and every HPA's target scaled to
    at least its minReplicas (the chart leaves `replicas` to the HPA: a new Deployment starts at 1)."""
    deployments = {d["metadata"]["name"]: d for d in release.deployments()}
    for hpa in release.objects("horizontalpodautoscalers"):
        target = deployments.get(hpa["spec"]["scaleTargetRef"]["name"])
        if target is None or target["spec"]["replicas"] < hpa["spec"].get("minReplicas", 1):
            return False
    for d in deployments.values():
        st = d.get("status", {})
        want = d["spec"]["replicas"]
        if st.get("observedGeneration") != d["metadata"]["generation"]:
            return False
        if (st.get("updatedReplicas"), st.get("readyReplicas"), st.get("replicas")) != (want, want, want):
            return False
    return len(release.pods()) == sum(d["spec"]["replicas"] for d in deployments.values())
