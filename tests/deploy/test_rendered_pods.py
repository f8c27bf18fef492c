"""The whole pipeline through the containers the chart renders (tests/deploy/conftest.py runs them).

Events go in through the collector's container, are stored in HBase by the preprocessor's, a model
is trained by the trainer's into the model repository volume, promoted by the evaluator's (which
must write there), and served by the ranker's (which reads it through a read-only mount): the
recommendations come from the new model version. Then: each container runs as the chart says.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
from scalerec_cli import driver
from scalerec_synthetic import Shop

from tests.deploy.conftest import SERVICES, Deployed, podman
from tests.pipeline_shop import pipeline_shop

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Run:
    shop: Shop
    ingested: dict[str, int]
    stats: dict[str, Any]
    job: dict[str, Any]
    report: dict[str, Any]
    model: dict[str, Any]
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def run(deployed: Deployed) -> Run:
    # The shop the e2e pipeline test uses: the model trained on it beats the baselines at the gate.
    shop = pipeline_shop()
    seconds: dict[str, float] = {}
    collector, headers = deployed.url("collector"), deployed.headers
    try:
        start = time.monotonic()
        asyncio.run(driver.post_batches(f"{collector}/v1/items", "items", shop.items, 500, headers=headers))
        ingested = asyncio.run(
            driver.post_batches(f"{collector}/v1/events", "events", shop.events, 1000, headers=headers)
        )
        seconds["ingest"] = time.monotonic() - start
        stats = driver.wait_preprocessed(deployed.url("preprocessor"), ingested["accepted"], 600, headers=headers)
        seconds["preprocess"] = time.monotonic() - start - seconds["ingest"]
        start = time.monotonic()
        job = driver.train(deployed.url("trainer"), timeout=900, headers=headers)
        seconds["train"] = time.monotonic() - start
        start = time.monotonic()
        report = driver.wait_report(deployed.url("evaluator"), job["version"], timeout=600, headers=headers)
        seconds["evaluate"] = time.monotonic() - start
        model: dict[str, Any] = {}
        if report["promoted"]:
            start = time.monotonic()
            model = driver.wait_serving(deployed.url("ranker"), job["version"], timeout=300, headers=headers)
            seconds["serve"] = time.monotonic() - start
    except driver.PipelineError as exc:
        pytest.fail(f"{exc}\n{deployed.all_logs()}", pytrace=False)
    steps = {k: round(v, 1) for k, v in seconds.items()}
    ndcg = {name: round(m["ndcg@10"], 4) for name, m in report.get("models", {}).items()}
    print(f"\ndeploy pipeline seconds: ready {deployed.ready_s} steps {steps}; ndcg@10 {ndcg}")
    return Run(shop, ingested, stats, job, report, model, seconds)


def test_every_accepted_event_is_stored_by_the_preprocessor_container(run: Run) -> None:
    assert run.ingested["accepted"] == len(run.shop.events) and run.ingested["rejected"] == 0
    assert run.stats["events_stored"] == run.ingested["accepted"], run.stats


def test_the_trainer_container_writes_a_model_version_the_evaluator_container_promotes(run: Run) -> None:
    assert run.job["status"] == "succeeded" and run.job["version"] >= 1, run.job
    assert run.report["promoted"], run.report.get("decision")


def test_the_ranker_container_answers_with_the_new_model_version(run: Run, deployed: Deployed) -> None:
    assert run.model.get("model_version") == run.job["version"] and run.model["last_error"] is None, run.model
    user = run.shop.users[3]
    rec = driver.recommend(deployed.url("ranker"), user, 10, headers=deployed.headers)
    assert rec["model_version"] == run.job["version"] and not rec["fallback"], rec
    assert len(rec["items"]) == 10


def test_the_api_is_closed_without_the_charts_key(deployed: Deployed) -> None:
    import httpx

    for service, path in (("collector", "/v1/events"), ("ranker", "/v1/recommendations?user_id=u1")):
        response = httpx.request(
            "POST" if service == "collector" else "GET", deployed.url(service) + path, json={"events": []}, timeout=10
        )
        assert response.status_code == 401, (service, response.status_code, response.text)


@pytest.mark.parametrize("service", SERVICES)
def test_each_container_runs_as_the_chart_says(deployed: Deployed, service: str) -> None:
    spec = deployed.workload(service)["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    info = deployed.inspect(service)
    config, host = info["Config"], info["HostConfig"]
    assert info["State"]["Running"], info["State"]
    assert info["RestartCount"] == 0, f"{service} restarted:\n{deployed.logs(service)}"
    uid, gid = c["securityContext"]["runAsUser"], c["securityContext"]["runAsGroup"]
    assert config["User"] == f"{uid}:{gid}", config["User"]
    assert host["ReadonlyRootfs"] is c["securityContext"]["readOnlyRootFilesystem"] is True
    assert info["Config"]["Image"].endswith(c["image"].split("/", 1)[1]), (info["Config"]["Image"], c["image"])
    env = dict(e.split("=", 1) for e in config["Env"])
    for e in c["env"]:
        assert env.get(e["name"]) == deployed.env_value(e), e["name"]  # API_KEYS, LOG_ID_KEY: from Secrets
    assert len(env["LOG_ID_KEY"]) == 48  # the chart's random key
    # Mounts: every one the chart asks for, read-only exactly where it says so.
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    for m in c["volumeMounts"]:
        assert m["mountPath"] in mounts, (m, sorted(mounts))
        assert mounts[m["mountPath"]]["RW"] is not bool(m.get("readOnly")), (m, mounts[m["mountPath"]])
    # And the process itself: its uid, and the root filesystem refuses writes (EROFS = 30).
    probe = "import os\ntry:\n open('/opt/venv/x', 'w')\nexcept OSError as e:\n print(os.getuid(), e.errno)"
    out = podman("exec", deployed.container(service), "python", "-c", probe).stdout.split()
    assert out == [str(uid), "30"], out


def test_the_model_repository_is_read_only_in_the_ranker_and_written_by_the_evaluator(
    run: Run, deployed: Deployed
) -> None:
    version = run.job["version"]
    script = (
        "import json, os, sys\n"
        "root = '/models'\n"
        "models = sorted(m for m in os.listdir(root) if os.path.isdir(os.path.join(root, m)))\n"
        "try:\n open(os.path.join(root, 'probe'), 'w'); err = 0\n"
        "except OSError as e:\n err = e.errno\n"
        "champions = {m: open(os.path.join(root, m, 'champion')).read().split()[0]"
        " for m in models if os.path.exists(os.path.join(root, m, 'champion'))}\n"
        "print(json.dumps({'models': models, 'write_errno': err, 'champions': champions}))\n"
    )
    ranker = json.loads(podman("exec", deployed.container("ranker"), "python", "-c", script).stdout)
    assert ranker["write_errno"] == 30, ranker  # EROFS: the chart mounts it read-only there
    assert str(version) in ranker["champions"].values(), ranker  # the evaluator's promotion, seen by the ranker
    evaluator = json.loads(podman("exec", deployed.container("evaluator"), "python", "-c", script).stdout)
    assert evaluator["write_errno"] == 0, evaluator
    podman("exec", deployed.container("evaluator"), "rm", "-f", "/models/probe")


def test_every_container_names_users_in_logs_with_one_key(deployed: Deployed) -> None:
    """LOG_ID_KEY from the chart's one Secret: every service's log lines name a user by the same hash."""
    keys = {}
    for service in SERVICES:
        env = dict(e.split("=", 1) for e in deployed.inspect(service)["Config"]["Env"])
        keys[service] = env.get("LOG_ID_KEY")
    assert len(set(keys.values())) == 1 and None not in keys.values(), keys


def test_the_trainer_container_is_the_cuda_build_and_trains_on_the_cpu_without_a_gpu(
    run: Run, deployed: Deployed
) -> None:
    """One trainer image for CPU and GPU nodes: its torch is PyPI's CUDA build, carrying CUDA, cuDNN and
    NCCL as wheels (the node brings only the driver). Here, with no GPU, TRAIN_DEVICE=auto chose the
    CPU (the run above trained there) and asking for CUDA fails with a message, not a crash later."""
    script = (
        "import json, torch\n"
        "from scalerec_models.distributed import resolve_device\n"
        "out = {'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version(),\n"
        "       'nccl': list(torch.cuda.nccl.version()), 'archs': torch.cuda.get_arch_list(),\n"
        "       'visible': torch.cuda.is_available(), 'auto': str(resolve_device('auto'))}\n"
        "try:\n resolve_device('cuda'); out['forced'] = ''\n"
        "except RuntimeError as e:\n out['forced'] = str(e)\n"
        "print(json.dumps(out))\n"
    )
    info = json.loads(podman("exec", deployed.container("trainer"), "python", "-c", script).stdout)
    assert info["cuda"] and info["cudnn"] and info["nccl"], info  # built with CUDA, its libraries inside
    assert "sm_90" in info["archs"], info  # Hopper (H100/H200) among the compiled architectures
    assert (info["visible"], info["auto"]) == (False, "cpu"), info
    assert "CUDA is not available" in info["forced"], info
    assert run.job["status"] == "succeeded", run.job  # and it trained, on the CPU
