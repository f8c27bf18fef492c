"""The install itself, on a real API server: `helm install --wait` of the dev and prod-gpu examples
reaches `deployed` (the chart's kubeVersion check, the API server's validation and admission, helm's
readiness wait all pass), every Deployment the chart renders exists, and each one's current
ReplicaSet has created its pods and the scheduler has placed every one of them on a node."""

from __future__ import annotations

import json
from typing import Any

import yaml

from tests.cluster.kube import Cluster, Release, condition


def test_the_api_server_is_the_version_the_chart_requires(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert (version["gitVersion"], version["major"], version["minor"]) == ("v1.31.4", "1", "31")


def test_the_release_is_deployed_with_every_rendered_object(release: Release) -> None:
    status = json.loads(release.helm("status", release.name, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed", status["info"]
    manifest = [o for o in yaml.safe_load_all(release.helm("get", "manifest", release.name).stdout) if o]
    assert manifest, "the release rendered nothing"
    for obj in manifest:
        kind, name = obj["kind"], obj["metadata"]["name"]
        live = release.cluster.get(kind, release.namespace, name)
        assert live["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.name, f"{kind}/{name}"


def _owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    return any(ref["uid"] == owner["metadata"]["uid"] for ref in obj["metadata"].get("ownerReferences", []))


def test_every_deployment_has_its_pods_created_and_scheduled(release: Release) -> None:
    deployments = release.deployments()
    assert deployments
    replicasets = release.objects("replicasets")
    pods = release.pods()
    nodes = {n["metadata"]["name"] for n in release.cluster.get("nodes")}
    for d in deployments:
        name = d["metadata"]["name"]
        revision = d["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        (rs,) = [
            rs
            for rs in replicasets
            if _owned_by(rs, d) and rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == revision
        ]
        want = d["spec"]["replicas"]
        assert want >= 1, name
        assert rs["status"].get("readyReplicas") == want, f"{name}: {rs['status']}"
        mine = [p for p in pods if _owned_by(p, rs)]
        assert len(mine) == want, f"{name}: {len(mine)} pods for {want} replicas"
        for p in mine:
            pod = p["metadata"]["name"]
            assert p["spec"].get("nodeName") in nodes, f"{pod} not on a node: {p['status']}"
            assert (condition(p, "PodScheduled") or {}).get("status") == "True", pod
            assert p["status"]["phase"] == "Running" and (condition(p, "Ready") or {}).get("status") == "True", pod


def _references(pod: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of every Secret, ConfigMap and claim a pod needs before a kubelet can start it."""
    spec = pod["spec"]
    refs: set[tuple[str, str]] = set()
    for v in spec.get("volumes", []):
        if "secret" in v:
            refs.add(("secrets", v["secret"]["secretName"]))
        if "configMap" in v:
            refs.add(("configmaps", v["configMap"]["name"]))
        if "persistentVolumeClaim" in v:
            refs.add(("persistentvolumeclaims", v["persistentVolumeClaim"]["claimName"]))
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        for e in c.get("env", []):
            source = e.get("valueFrom", {})
            if "secretKeyRef" in source:
                refs.add(("secrets", source["secretKeyRef"]["name"]))
            if "configMapKeyRef" in source:
                refs.add(("configmaps", source["configMapKeyRef"]["name"]))
        for f in c.get("envFrom", []):
            if "secretRef" in f:
                refs.add(("secrets", f["secretRef"]["name"]))
            if "configMapRef" in f:
                refs.add(("configmaps", f["configMapRef"]["name"]))
    return refs


def test_what_the_pods_reference_exists(release: Release) -> None:
    """kwok starts no container, so a missing Secret or ConfigMap would not stop a pod here as a
    kubelet would (CreateContainerConfigError): check every reference, and that claims are Bound."""
    for p in release.pods():
        for kind, name in sorted(_references(p)):
            live = release.cluster.get(kind, release.namespace, name)
            if kind == "persistentvolumeclaims":
                assert live["status"]["phase"] == "Bound", f"{p['metadata']['name']}: claim {name}"


def test_every_service_has_endpoints_for_its_deployments_pods(release: Release) -> None:
    """The endpoint-slice controller resolves each Service's selector and target ports against the live
    pods: a selector that misses the pods, or a targetPort naming a port no container declares,
    leaves a Service with no endpoints (or none for that port), and its callers with nothing to reach."""
    pods = release.pods()
    slices = release.objects("endpointslices.discovery.k8s.io")
    checked = 0
    for svc in release.objects("services"):
        name, selector = svc["metadata"]["name"], svc["spec"].get("selector")
        selected = [
            p for p in pods if selector and all(p["metadata"]["labels"].get(k) == v for k, v in selector.items())
        ]
        if not selected:
            continue  # e.g. the training rendezvous Service: its Job's pods run only when training
        mine = [s for s in slices if s["metadata"]["labels"].get("kubernetes.io/service-name") == name]
        ready = {
            ep["targetRef"]["name"]
            for s in mine
            for ep in s.get("endpoints") or []
            if ep.get("conditions", {}).get("ready")
        }
        assert ready == {p["metadata"]["name"] for p in selected}, f"{name}: endpoints {ready}"
        ports = {(p.get("name"), p["port"]) for s in mine for p in s.get("ports") or []}
        for sp in svc["spec"]["ports"]:
            assert any(pn == sp.get("name") for pn, _ in ports), f"{name}: port {sp} resolves to no container port"
        checked += 1
    assert checked >= len(release.deployments()), "every Deployment is behind a Service"
