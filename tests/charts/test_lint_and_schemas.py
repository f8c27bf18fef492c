"""helm lint, values.schema.json, and every rendered object against Kubernetes' own schemas."""

from __future__ import annotations

import pytest
from kubernetes_validate import utils as kv

from tests.charts.helm import (
    CHART,
    EXAMPLES,
    KUBE_VERSIONS,
    SCENARIOS,
    Rendered,
    rendered,
    run_helm,
    template_args,
    validate_object,
)

# Custom resources have no schema in kubernetes-validate; each is checked by a test of its own.
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}


@pytest.mark.parametrize("values", [None, "dev", "prod-gpu"])
def test_helm_lint_strict(values: str | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if values:
        args += ["-f", str(EXAMPLES / values / "values.yaml")]
    out = run_helm(args).stdout
    assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize(
    ("setting", "path"),
    [
        ("components.rankr.enabled=true", "/components"),  # a typo in a component's name
        ("components.ranker.autoscalng.enabled=true", "/components/ranker"),  # ... in a component key
        ("default.probes.livenes.periodSeconds=1", "/default/probes"),
        ("kafka.bootstrapServers=k:9092", "/kafka"),
        ("components.preprocessor.keda.lagTreshold=5", "/components/preprocessor/keda"),
    ],
)
def test_schema_rejects_typos(setting: str, path: str) -> None:
    proc = run_helm(template_args(["--set", setting]), check=False)
    assert proc.returncode != 0, f"--set {setting} rendered; values.schema.json should reject it"
    assert "additional properties" in proc.stderr and path in proc.stderr, proc.stderr


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_objects_match_kubernetes_schemas(scenario: Rendered, kube_version: str) -> None:
    errors: list[str] = []
    for obj in scenario.objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            validate_object(obj, kube_version)
        except kv.ValidationError as e:
            errors.append(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
        except kv.SchemaNotFoundError as e:
            errors.append(f"{name}: {e.message}")
    assert not errors, f"{scenario.scenario} @ {kube_version}:\n" + "\n".join(errors)


def test_scenarios_cover_every_template() -> None:
    kinds = {o["kind"] for name in SCENARIOS for o in rendered(name).objects}
    expected = {
        "Deployment",
        "Service",
        "ServiceAccount",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "ScaledObject",
        "ServiceMonitor",
        "Job",
        "CronJob",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
    }
    assert expected <= kinds, f"never rendered: {expected - kinds}"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["persistence.data.shared=false"], "embedded SQLite backends"),
        (["components.preprocessor.keda.enabled=true"], "needs kafka.bootstrap"),
        (["modelRepository.type=objectStorage"], "objectStorage.remote"),
        (
            [
                "kafka.bootstrap=k:9092",
                "components.preprocessor.keda.enabled=true",
                "components.preprocessor.autoscaling.enabled=true",
            ],
            "not both",
        ),
    ],
)
def test_broken_configurations_fail_with_a_message(settings: list[str], message: str) -> None:
    args: list[str] = []
    for s in settings:
        args += ["--set", s]
    proc = run_helm(template_args(args), check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
