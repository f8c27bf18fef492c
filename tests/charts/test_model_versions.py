"""The trainer's version counter as the chart renders it (modelRepository.type=objectStorage): the ConfigMap,
a Role on that one object, the trainer's env, and its service account token mounted in the trainer
container alone. Run against the real API server in tests/cluster/test_version_counter.py."""

from __future__ import annotations

from typing import Any

from tests.charts.helm import RELEASE, Rendered, pod_spec, render, rendered

TRAINER = f"{RELEASE}-trainer"
COUNTER = f"{TRAINER}-model-versions"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TRAINING = [
    "--set",
    "components.trainer.training.job.enabled=true",
    "--set",
    "components.trainer.training.cronJob.enabled=true",
]
OBJECT_STORAGE = [
    "--set", "modelRepository.type=objectStorage",
    "--set", "modelRepository.objectStorage.remote=remote:models",
    "--set", "apiKeys.keys={k1}",
    *TRAINING,
]  # fmt: skip


def _workloads(r: Rendered) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{o['kind']}/{o['metadata']['name']}", spec) for o in r.objects if (spec := pod_spec(o)) is not None]


def _is_training(workload: str) -> bool:
    return workload.startswith(f"Deployment/{TRAINER}") or workload.startswith(("Job/", "CronJob/"))


def test_with_object_storage_every_training_pod_takes_its_numbers_from_the_counter() -> None:
    r = render(OBJECT_STORAGE)
    (config_map,) = [o for o in r.of_kind("ConfigMap") if o["metadata"]["name"] == COUNTER]
    assert "data" not in config_map, "the count is the trainer's: an upgrade must not render over it"
    (role,) = [o for o in r.of_kind("Role") if o["metadata"]["name"] == COUNTER]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [COUNTER], "verbs": ["get", "update"]}
    ]
    (binding,) = [o for o in r.of_kind("RoleBinding") if o["metadata"]["name"] == COUNTER]
    assert binding["roleRef"]["name"] == COUNTER
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": TRAINER, "namespace": "recs"}]
    assert r.get("ServiceAccount", TRAINER)["automountServiceAccountToken"] is False
    training = [(w, spec) for w, spec in _workloads(r) if _is_training(w)]
    assert {w.split("/")[0] for w, _ in training} == {"Deployment", "Job", "CronJob"}
    for workload, spec in training:
        assert spec["serviceAccountName"] == TRAINER, workload
        assert spec["automountServiceAccountToken"] is False, workload
        (main,) = [c for c in spec["containers"] if c["name"] == "trainer"]
        env = {e["name"]: e.get("value") for e in main["env"]}
        assert env["MODEL_VERSION_COUNTER"] == f"kubernetes:configmap/{COUNTER}", workload
        (volume,) = [v for v in spec["volumes"] if v["name"] == "api-token"]
        sources = volume["projected"]["sources"]
        assert [next(iter(s)) for s in sources] == ["serviceAccountToken", "configMap", "downwardAPI"], workload
        assert sources[1]["configMap"]["name"] == "kube-root-ca.crt"
        assert {"name": "api-token", "mountPath": TOKEN_DIR, "readOnly": True} in main["volumeMounts"], workload
        # The model-sync sidecar (and anything else in the pod) never gets the token.
        for other in spec.get("initContainers", []) + [c for c in spec["containers"] if c is not main]:
            assert not any(m["name"] == "api-token" for m in other.get("volumeMounts", [])), (workload, other["name"])
    for workload, spec in _workloads(r):
        if not _is_training(workload):
            assert not any(v["name"] == "api-token" for v in spec.get("volumes", [])), workload
            for c in spec["containers"]:
                assert "MODEL_VERSION_COUNTER" not in {e["name"] for e in c.get("env", [])}, workload


def test_a_shared_claim_needs_no_counter() -> None:
    """With the pvc repository every trainer shares one file system, whose lock numbers the versions."""
    for r in (rendered("defaults"), render(["--set", "apiKeys.keys={k1}", *TRAINING])):
        assert not [o for o in r.objects if o["metadata"]["name"] == COUNTER]
        for workload, spec in _workloads(r):
            assert not any(v["name"] == "api-token" for v in spec.get("volumes", [])), workload
