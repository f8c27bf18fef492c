"""What must hold in every rendered scenario: autoscaler targets, probes, resources,
non-root pods, a PDB and a Service per Deployment, Triton on a GPU, KEDA, torchrun."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from typing import Any

from tests.charts.helm import EXAMPLES, RELEASE, Rendered, pod_spec, render, rendered

# Locust workers only dial the master: nothing to put behind a Service.
NO_SERVICE = {f"{RELEASE}-loadtests-worker"}


def _workloads(r: Rendered) -> list[dict[str, Any]]:
    return [o for o in r.objects if pod_spec(o) is not None]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_autoscalers_target_a_rendered_workload_of_the_right_kind(scenario: Rendered) -> None:
    targets: list[str] = []
    for scaler in scenario.of_kind("HorizontalPodAutoscaler") + scenario.of_kind("ScaledObject"):
        ref = scaler["spec"]["scaleTargetRef"]
        assert ref.get("apiVersion") == "apps/v1" and ref.get("kind") == "Deployment", ref
        target = scenario.get(ref["kind"], ref["name"])  # KeyError names what is missing
        assert target["apiVersion"] == ref["apiVersion"]
        targets.append(ref["name"])
    # KEDA owns an HPA of its own: two scalers on one Deployment would fight.
    assert len(targets) == len(set(targets)), targets


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(scenario: Rendered) -> None:
    scaled = {s["spec"]["scaleTargetRef"]["name"] for s in scenario.of_kind("HorizontalPodAutoscaler")}
    scaled |= {s["spec"]["scaleTargetRef"]["name"] for s in scenario.of_kind("ScaledObject")}
    for d in scenario.of_kind("Deployment"):
        assert ("replicas" in d["spec"]) != (d["metadata"]["name"] in scaled), d["metadata"]["name"]


def test_prod_autoscales_the_stateless_apis_and_triton() -> None:
    r = rendered("prod-gpu")
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in r.of_kind("HorizontalPodAutoscaler")}
    assert {f"{RELEASE}-collector", f"{RELEASE}-ranker", f"{RELEASE}-triton"} <= hpas
    triton_hpa = r.get("HorizontalPodAutoscaler", f"{RELEASE}-triton")
    metrics = triton_hpa["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Pods"], "Triton scales on queue time, not CPU"


def test_long_running_containers_have_probes_and_every_container_requests_resources(scenario: Rendered) -> None:
    for w in _workloads(scenario):
        spec = pod_spec(w)
        assert spec is not None
        name = f"{scenario.scenario}: {w['kind']}/{w['metadata']['name']}"
        batch = w["kind"] in ("Job", "CronJob")
        for c in spec["containers"]:
            req = c.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(req), f"{name}/{c['name']} requests {req}"
            if batch:
                continue
            assert "livenessProbe" in c and "readinessProbe" in c, f"{name}/{c['name']} lacks probes"
        for c in spec.get("initContainers", []):
            req = c.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(req), f"{name}/init {c['name']} requests {req}"
            if c.get("restartPolicy") == "Always":  # native sidecar: runs for the pod's life
                assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(c), f"{name}/{c['name']}"
            else:  # Kubernetes rejects probes on plain init containers
                assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(c), f"{name}/{c['name']}"
        if batch:
            job = w["spec"] if w["kind"] == "Job" else w["spec"]["jobTemplate"]["spec"]
            assert job.get("activeDeadlineSeconds"), f"{name}: a batch pod without probes needs a deadline"


def test_scalerec_services_probe_healthz_and_readyz(scenario: Rendered) -> None:
    for name in ("collector", "preprocessor", "trainer", "ranker", "evaluator"):
        d = next((o for o in scenario.of_kind("Deployment") if o["metadata"]["name"] == f"{RELEASE}-{name}"), None)
        if d is None:
            continue
        (c,) = [c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == name]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert "startupProbe" in c


def test_no_container_runs_as_root_or_can_escalate(scenario: Rendered) -> None:
    for w in _workloads(scenario):
        spec = pod_spec(w)
        assert spec is not None
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", w["metadata"]["name"]
        for c in spec["containers"] + spec.get("initContainers", []):
            where = f"{scenario.scenario}: {w['metadata']['name']}/{c['name']}"
            sc = {**pod_sc, **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True, where
            assert sc.get("runAsUser") not in (None, 0), f"{where}: runAsUser {sc.get('runAsUser')}"
            csc = c.get("securityContext", {})
            assert csc.get("allowPrivilegeEscalation") is False, where
            assert csc.get("readOnlyRootFilesystem") is True, where
            assert csc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not csc.get("privileged"), where


def test_read_only_root_gets_writable_tmp(scenario: Rendered) -> None:
    for w in _workloads(scenario):
        spec = pod_spec(w)
        assert spec is not None
        for c in spec["containers"]:
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{w['metadata']['name']}/{c['name']}"


def test_every_deployment_has_a_pdb_and_a_service(scenario: Rendered) -> None:
    for d in scenario.of_kind("Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        name = d["metadata"]["name"]
        pdbs = [
            p for p in scenario.of_kind("PodDisruptionBudget") if _matches(p["spec"]["selector"]["matchLabels"], labels)
        ]
        assert len(pdbs) == 1, f"{scenario.scenario}: {name} has {len(pdbs)} PDBs"
        if name in NO_SERVICE:
            continue
        services = [s for s in scenario.of_kind("Service") if _matches(s["spec"].get("selector", {}), labels)]
        assert services, f"{scenario.scenario}: no Service selects {name}"
        ports = {p["name"] for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for s in services:
            for p in s["spec"]["ports"]:
                assert p["targetPort"] in ports, f"{s['metadata']['name']} targets {p['targetPort']}, pod has {ports}"


def test_every_deployment_has_a_network_policy_and_spread(scenario: Rendered) -> None:
    for d in scenario.of_kind("Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert (
            any(_matches(n["spec"]["podSelector"]["matchLabels"], labels) for n in scenario.of_kind("NetworkPolicy"))
            or d["metadata"]["name"] in NO_SERVICE
        ), d["metadata"]["name"]
    if scenario.scenario == "prod-gpu":
        for d in scenario.of_kind("Deployment"):
            keys = [t["topologyKey"] for t in d["spec"]["template"]["spec"]["topologySpreadConstraints"]]
            assert "kubernetes.io/hostname" in keys, d["metadata"]["name"]


def test_triton_runs_on_a_gpu_with_explicit_model_control() -> None:
    r = rendered("prod-gpu")
    d = r.get("Deployment", f"{RELEASE}-triton")
    spec = d["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert "--model-control-mode=explicit" in c["args"]
    assert any(a.startswith("--model-repository=") for a in c["args"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert spec["nodeSelector"] and spec["tolerations"], "Triton belongs on GPU nodes"
    # default.env holds ScaleRec settings; Triton gets only its own env.
    assert not {e["name"] for e in c.get("env", [])} & {"DEPLOYMENT", "TOPIC_PARTITIONS", "LOG_FORMAT"}


def test_ranker_scores_through_tritons_grpc_service() -> None:
    r = rendered("prod-gpu")
    ranker = r.get("Deployment", f"{RELEASE}-ranker")
    env = {e["name"]: e.get("value") for e in ranker["spec"]["template"]["spec"]["containers"][0]["env"]}
    triton = r.get("Deployment", f"{RELEASE}-triton")
    pod_labels = triton["spec"]["template"]["metadata"]["labels"]
    ports = triton["spec"]["template"]["spec"]["containers"][0]["ports"]
    grpc = next(p["containerPort"] for p in ports if p["name"] == "grpc")
    # Headless Services: their names resolve to every Triton pod, so requests are balanced over all
    # replicas (a ClusterIP's one gRPC connection reaches one pod), ready ones for the rankers.
    ready = r.get("Service", f"{RELEASE}-triton-ready")
    assert env["SCORER_URL"] == f"triton://{RELEASE}-triton-ready:{ready['spec']['ports'][0]['port']}"
    # The evaluator is Triton's one model controller: it loads what the champion and experiments need on
    # every replica, those still starting included.
    pods = r.get("Service", f"{RELEASE}-triton-pods")
    evaluator = r.get("Deployment", f"{RELEASE}-evaluator")
    ev_env = {e["name"]: e.get("value") for e in evaluator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert ev_env["TRITON_URL"] == f"triton://{RELEASE}-triton-pods:{pods['spec']['ports'][0]['port']}"
    assert "TRITON_URL" not in env
    for svc, not_ready in ((ready, False), (pods, True)):
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is not_ready
        assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
        assert svc["spec"]["ports"][0]["targetPort"] == "grpc"
    assert grpc == pods["spec"]["ports"][0]["port"]


def test_tritons_headless_service_names_fit_in_63_characters() -> None:
    name = "r" * 53  # the longest release name Helm allows
    r = render(["--set", f"fullnameOverride={name}", "--set", "components.triton.enabled=true"])
    headless = [s for s in r.of_kind("Service") if s["spec"].get("clusterIP") == "None"]
    assert {s["metadata"]["name"].rsplit("-", 1)[1] for s in headless} >= {"ready", "pods"}
    assert all(len(s["metadata"]["name"]) <= 63 for s in headless), [s["metadata"]["name"] for s in headless]
    urls = {
        e["value"]
        for d in r.of_kind("Deployment")
        for e in d["spec"]["template"]["spec"]["containers"][0].get("env", [])
        if e["name"] in ("SCORER_URL", "TRITON_URL")
    }
    assert urls == {f"triton://{s['metadata']['name']}:8001" for s in headless}


def test_keda_scales_the_preprocessor_on_its_consumer_lag() -> None:
    r = rendered("prod-gpu")
    (so,) = r.of_kind("ScaledObject")
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    pre = r.get("Deployment", f"{RELEASE}-preprocessor")
    env = {e["name"]: e.get("value") for e in pre["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["BUS_URL"].split("?")[0] == f"kafka://{trigger['metadata']['bootstrapServers']}"
    # Consumers beyond the partition count sit idle.
    assert so["spec"]["maxReplicaCount"] <= int(env["TOPIC_PARTITIONS"])


def test_multi_node_training_is_an_indexed_job_with_a_rendezvous_service() -> None:
    r = rendered("everything")
    (job,) = r.of_kind("Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    svc = r.get("Service", pod["subdomain"])
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert _matches(svc["spec"]["selector"], spec["template"]["metadata"]["labels"])
    (c,) = pod["containers"]
    assert c["command"] == ["torchrun"]
    assert "--nnodes=2" in c["args"] and "--nproc-per-node=8" in c["args"]
    assert f"--master-addr=$(JOB_NAME)-0.{svc['metadata']['name']}" in c["args"]
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 8
    # Training pods must not be picked up by the trainer service's Service or PDB.
    trainer_svc = r.get("Service", f"{RELEASE}-trainer")
    assert not _matches(trainer_svc["spec"]["selector"], spec["template"]["metadata"]["labels"])


def test_api_keys_come_from_a_secret_never_a_plain_value() -> None:
    for scenario in ("dev", "prod-gpu", "everything"):
        r = rendered(scenario)
        for d in r.of_kind("Deployment"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                for e in c.get("env", []):
                    if e["name"] == "API_KEYS":
                        assert "valueFrom" in e and "value" not in e, d["metadata"]["name"]
        ranker = r.get("Deployment", f"{RELEASE}-ranker")
        (keys,) = [e for e in ranker["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "API_KEYS"]
        secret = keys["valueFrom"]["secretKeyRef"]["name"]
        if scenario == "prod-gpu":
            assert secret == "scalerec-api-keys"  # existingSecret
        else:
            assert r.get("Secret", secret)


def test_every_service_gets_the_api_keys() -> None:
    """Every ScaleRec service refuses to start without API_KEYS (AUTH=enabled): the preprocessor and
    the trainer did, under the chart, until tests/images ran the pods it renders."""
    for scenario in ("dev", "prod-gpu"):
        r = rendered(scenario)
        for service in ("collector", "preprocessor", "trainer", "ranker", "evaluator"):
            d = r.get("Deployment", f"{RELEASE}-{service}")
            names = {e["name"] for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
            assert "API_KEYS" in names, f"{scenario}: {service} gets no API_KEYS and would not start"


def test_locust_reaches_both_services_by_url() -> None:
    r = rendered("everything")
    for role in ("master", "worker"):
        d = r.get("Deployment", f"{RELEASE}-loadtests-{role}")
        (c,) = d["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["COLLECTOR_URL"] == f"http://{RELEASE}-collector:8081"
        assert env["RANKER_URL"] == f"http://{RELEASE}-ranker:8084"
        assert c["command"] == ["locust"] and "--locustfile=/locust/locustfile.py" in c["args"]


# Who may write the model repository: the trainer (new versions) and the evaluator, the one
# promotion writer (champion file, config.pbtxt's served versions). Readers mount it read-only.
MODEL_REPOSITORY_WRITERS = {"trainer", "evaluator"}
MODEL_REPOSITORY_READERS = {"ranker", "triton"}


def test_model_repository_is_writable_only_by_the_trainer_and_the_evaluator(scenario: Rendered) -> None:
    seen = set()
    for name in MODEL_REPOSITORY_WRITERS | MODEL_REPOSITORY_READERS:
        d = next((o for o in scenario.of_kind("Deployment") if o["metadata"]["name"] == f"{RELEASE}-{name}"), None)
        if d is None:
            continue
        seen.add(name)
        spec = d["spec"]["template"]["spec"]
        (c,) = [c for c in spec["containers"] if c["name"] == name]
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "model-repository"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == "model-repository"]
        writer = name in MODEL_REPOSITORY_WRITERS
        where = f"{scenario.scenario}: {name}"
        assert mount.get("readOnly", False) is not writer, f"{where}: mount {mount}"
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"].get("readOnly", False) is not writer, f"{where}: {volume}"
        else:  # objectStorage: a local mirror; writers must upload what they write, readers never do
            (sync,) = [s for s in spec.get("initContainers", []) if s["name"] == "model-sync"]
            script = sync["args"][0]
            uploads = '/models "$REMOTE"' in script
            assert uploads is writer, f"{where}: {script}"
            assert '"$REMOTE" /models' in script, f"{where}: writers read the others' versions too"
    assert seen >= {"evaluator", "ranker"}, seen


def test_ranker_runs_one_worker_per_requested_cpu(scenario: Rendered) -> None:
    """Without a CPU limit the pod has no cgroup quota: WORKERS=0 would fork one worker (and one model
    activation) per CPU of the node, far past the memory limit. The chart derives it from the request."""
    ranker = next((d for d in scenario.of_kind("Deployment") if d["metadata"]["name"] == f"{RELEASE}-ranker"), None)
    if ranker is None:
        return  # a scenario without the ranker
    c = ranker["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    cpu = str(c["resources"]["requests"]["cpu"])
    cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    assert env["WORKERS"] == str(max(1, math.ceil(cores))), (cpu, env["WORKERS"])


def _keys_checksums(r: Rendered) -> dict[str, str | None]:
    return {
        d["metadata"]["name"]: (d["spec"]["template"]["metadata"].get("annotations") or {}).get("checksum/api-keys")
        for d in r.of_kind("Deployment")
        if any(e["name"] == "API_KEYS" for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", []))
    }


def test_pods_roll_when_the_secrets_data_changes_not_when_other_values_do() -> None:
    """The checksum is over the Secret's data as rendered (what the pods read), so a key change rolls
    every pod that reads API_KEYS, and nothing else does."""
    base = ["-f", str(EXAMPLES / "dev" / "values.yaml")]
    one = render([*base, "--set", "apiKeys.keys={k1:ingest+serve,k2:admin}"])
    secret = one.get("Secret", f"{RELEASE}-api-keys")
    expected = hashlib.sha256(json.dumps(secret["data"], separators=(",", ":"), sort_keys=True).encode()).hexdigest()
    sums = _keys_checksums(one)
    assert len(sums) == 5 and set(sums.values()) == {expected[:16]}, sums
    assert base64.b64decode(secret["data"]["api-keys"]).decode() == "k1:ingest+serve,k2:admin"

    rotated = _keys_checksums(render([*base, "--set", "apiKeys.keys={k1:ingest+serve,k3:admin}"]))
    assert set(rotated) == set(sums) and all(rotated[n] != sums[n] for n in sums)
    unrelated = _keys_checksums(
        render([*base, "--set", "apiKeys.keys={k1:ingest+serve,k2:admin}", "--set", "components.ranker.replicas=3"])
    )
    assert unrelated == sums


def test_an_existing_secret_keeps_the_keys_out_of_the_release() -> None:
    """With existingSecret the chart renders no Secret and no key (not even keys also given in values):
    the keys are in no release manifest. Under `helm template` there is no cluster to read the
    Secret from, so no checksum either (`helm upgrade` reads it with lookup)."""
    r = render(
        [
            "-f",
            str(EXAMPLES / "prod-gpu" / "values.yaml"),
            "--set",
            "apiKeys.keys={sup3r-s3cret-key:admin}",
        ]
    )
    out = json.dumps(r.objects)
    assert "sup3r-s3cret-key" not in out
    assert base64.b64encode(b"sup3r-s3cret-key:admin").decode() not in out
    assert not [s for s in r.of_kind("Secret") if "api-keys" in s["metadata"]["name"]]
    sums = _keys_checksums(r)
    assert len(sums) == 5 and set(sums.values()) == {None}


SERVICES = ("collector", "preprocessor", "trainer", "ranker", "evaluator")


def _log_id_key_refs(r: Rendered) -> dict[str, dict[str, str]]:
    """LOG_ID_KEY's secretKeyRef per ScaleRec container (Deployments and the training Job/CronJob)."""
    refs = {}
    for obj in r.objects:
        spec = pod_spec(obj)
        for c in spec["containers"] if spec else []:
            env = {e["name"]: e for e in c.get("env", [])}
            if "SCALEREC_SERVICE" in env or c["name"] in SERVICES or "API_KEYS" in env:
                assert "LOG_ID_KEY" in env, f"{r.scenario}: {obj['metadata']['name']}/{c['name']} has no LOG_ID_KEY"
                assert "value" not in env["LOG_ID_KEY"], "LOG_ID_KEY must come from a Secret"
                refs[f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}"] = env["LOG_ID_KEY"]["valueFrom"][
                    "secretKeyRef"
                ]
    return refs


def test_every_service_hashes_ids_in_logs_with_one_key_from_a_secret() -> None:
    """Without one LOG_ID_KEY each process hashes with its own random key: two services' lines about
    one user could not be joined. The chart makes the key once and gives it to every ScaleRec pod."""
    for scenario in ("dev", "single-machine", "everything"):
        r = rendered(scenario)
        refs = _log_id_key_refs(r)
        services = {n.split("/")[2] for n in refs}
        assert services >= set(SERVICES), (scenario, services)
        (ref,) = {(x["name"], x["key"]) for x in refs.values()}  # one Secret, one key, for all
        secret = r.get("Secret", ref[0])
        key = base64.b64decode(secret["data"][ref[1]])
        assert len(key) == 48 and key.isalnum(), "a random key, long enough for HMAC-SHA256"
        expected = hashlib.sha256(json.dumps(secret["data"], separators=(",", ":")).encode()).hexdigest()[:16]
        for d in r.of_kind("Deployment"):
            if d["metadata"]["labels"]["app.kubernetes.io/component"] in SERVICES:
                assert d["spec"]["template"]["metadata"]["annotations"]["checksum/log-id-key"] == expected


def test_the_log_id_key_is_new_per_install_and_an_existing_secret_keeps_it_out_of_the_release() -> None:
    first, second = (render(["-f", str(EXAMPLES / "dev" / "values.yaml")]) for _ in range(2))
    name = f"{RELEASE}-log-id-key"
    assert first.get("Secret", name)["data"] != second.get("Secret", name)["data"]  # upgrades keep it: lookup

    r = render(["-f", str(EXAMPLES / "dev" / "values.yaml"), "--set", "logIdKey.existingSecret=ops-log-key"])
    assert not [s for s in r.of_kind("Secret") if "log-id-key" in s["metadata"]["name"]]
    refs = _log_id_key_refs(r)
    assert refs and {(x["name"], x["key"]) for x in refs.values()} == {("ops-log-key", "log-id-key")}
    # No cluster to read it from under `helm template`, so no checksum (helm upgrade reads it with lookup).
    for d in r.of_kind("Deployment"):
        assert "checksum/log-id-key" not in (d["spec"]["template"]["metadata"].get("annotations") or {})


def test_serving_pods_drain_before_they_stop(scenario: Rendered) -> None:
    """A terminating pod keeps serving while endpoints and proxies let go of it (a preStop sleep), and its
    grace period covers that drain plus the services' own graceful stop (30 s with WORKERS > 1)."""
    for deployment in scenario.of_kind("Deployment"):
        spec = pod_spec(deployment)
        assert spec is not None
        name = deployment["metadata"]["name"]
        if "-loadtests" in name:  # Locust: nobody's requests to drain
            continue
        main = spec["containers"][0]
        drain = main["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert drain >= 5, (name, drain)
        assert spec["terminationGracePeriodSeconds"] >= drain + 30, name


def test_gpu_deployments_roll_without_needing_a_spare_gpu(scenario: Rendered) -> None:
    """A surge pod would wait forever for a GPU on a fully allocated pool: GPU Deployments replace pods
    one at a time; the others surge and never dip."""
    for deployment in scenario.of_kind("Deployment"):
        spec = pod_spec(deployment)
        assert spec is not None
        if "-loadtests" in deployment["metadata"]["name"]:
            continue
        if deployment["metadata"]["name"].endswith("-evaluator"):
            # One at a time: two evaluators side by side would both promote and drive Triton.
            assert deployment["spec"]["strategy"] == {"type": "Recreate"}
            continue
        gpus = any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in spec["containers"])
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        expected = {"maxSurge": 0, "maxUnavailable": 1} if gpus else {"maxSurge": "25%", "maxUnavailable": 0}
        assert rolling == expected, (deployment["metadata"]["name"], rolling)


def test_no_drain_when_asked_for_none() -> None:
    r = render(["--set", "default.drainSeconds=0"])
    for deployment in r.of_kind("Deployment"):
        spec = pod_spec(deployment)
        assert spec is not None and all("lifecycle" not in c for c in spec["containers"])
