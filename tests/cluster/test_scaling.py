"""What scales and protects the pods, accepted by the API server and read by the real controllers:
PodDisruptionBudgets select the pods of a Deployment (the disruption controller counts them), the
HPAs find the Deployments they scale (the HPA controller gets their scale subresource and holds them
within bounds), and KEDA's ScaledObject, validated against KEDA's own CRD, scales the preprocessor on
the topic and consumer group the preprocessor really uses under this release's DEPLOYMENT."""

from __future__ import annotations

from typing import Any

from scalerec_events.topics import Topic
from scalerec_preprocessor.config import PreprocessorSettings

from tests.cluster.kube import Release, condition, deployment_env, poll_until


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "the chart selects by labels only"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_every_pdb_protects_the_pods_of_one_deployment(release: Release) -> None:
    pdbs = release.objects("poddisruptionbudgets")
    assert pdbs, f"{release.example}: the chart renders PodDisruptionBudgets"
    deployments = release.deployments()
    for pdb in pdbs:
        name = pdb["metadata"]["name"]
        (target,) = [
            d for d in deployments if _matches(pdb["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]

        def counted(pdb_name: str = name) -> dict[str, Any] | None:
            live = release.cluster.get("poddisruptionbudgets", release.namespace, pdb_name)
            st = live.get("status", {})
            return st if st.get("observedGeneration") == live["metadata"]["generation"] else None

        status = poll_until(f"the disruption controller counts {name}", counted, timeout=60)
        replicas = target["spec"]["replicas"]
        assert status["expectedPods"] == replicas, f"{name}: {status}"
        assert status["currentHealthy"] == replicas, f"{name}: {status}"
        # A budget that forbids every eviction blocks node drains forever; one that allows all protects nothing.
        if replicas > 1:
            assert 0 < status["disruptionsAllowed"] < replicas, f"{name}: {status}"


def test_every_hpa_finds_and_bounds_its_deployment(prod: Release) -> None:
    hpas = prod.objects("horizontalpodautoscalers")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == {
        "scalerec-collector",
        "scalerec-ranker",
        "scalerec-triton",
    }
    names = {d["metadata"]["name"] for d in prod.deployments()}
    for hpa in hpas:
        ref, name = hpa["spec"]["scaleTargetRef"], hpa["metadata"]["name"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment") and ref["name"] in names, name

        def able(hpa_name: str = name) -> dict[str, Any] | None:
            live = prod.cluster.get("horizontalpodautoscalers", prod.namespace, hpa_name)
            c = condition(live, "AbleToScale")
            return c if c and c["status"] == "True" else None

        # The controller got the target's scale subresource (a wrong kind or name says FailedGetScale).
        poll_until(f"{name} able to scale", able, timeout=90)
        replicas = prod.cluster.get("deployments", prod.namespace, ref["name"])["spec"]["replicas"]
        assert hpa["spec"]["minReplicas"] <= replicas <= hpa["spec"]["maxReplicas"], name


def test_keda_scales_the_preprocessor_on_the_group_it_commits(prod: Release) -> None:
    (so,) = prod.objects("scaledobjects.keda.sh")
    ref = so["spec"]["scaleTargetRef"]
    preprocessor = prod.cluster.get("deployments", prod.namespace, ref["name"])
    assert preprocessor["metadata"]["labels"]["app.kubernetes.io/component"] == "preprocessor"
    assert ref.get("kind", "Deployment") == "Deployment" and ref.get("apiVersion", "apps/v1") == "apps/v1"
    # The settings the deployed preprocessor pod builds from the env the API server holds for it.
    env = deployment_env(preprocessor)
    settings = PreprocessorSettings(**{k.lower(): v for k, v in env.items()})
    assert settings.deployment == "prod"
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == settings.stream_group("events") == "prod.preprocessor.events"
    assert meta["topic"] == settings.topic(Topic.EVENTS_RAW) == "prod.events.raw.v1"
    assert meta["bootstrapServers"] == settings.bus_url.split("://", 1)[1].split("?", 1)[0]
