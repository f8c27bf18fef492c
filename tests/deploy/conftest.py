"""The pods the chart renders, run by ``podman kube play`` against the shared stack's Kafka, HBase and Memcached.

``helm template`` with ``examples/single-machine/values.yaml`` gives the Deployments, the model
repository's PersistentVolumeClaim and the API keys' Secret; ``podman kube play --network host``
runs them as they are: each pod's image, env (API_KEYS from the Secret), command, volume mounts
(emptyDirs, the claim as a podman volume, read-only where the chart says so), security context
(uid/gid 10001, read-only root filesystem, capabilities dropped, no privilege escalation),
memory limits, restart policy and probes. Host networking, because Kafka advertises itself at
127.0.0.1: each service listens on the host at the port the chart gives it (free ports, chosen
here and passed with ``--set``, so a developer's own services on 8081-8085 do not collide).

Two translations that podman 4.3 (Debian bookworm's) needs, and nothing else is changed:

* a Secret is stored by ``kube play`` as YAML but read back for ``secretKeyRef`` as a JSON map
  of key to base64 value ("secret ... is not valid JSON"), so it is created with
  ``podman secret create`` from the same Secret's data in that form;
* with host networking, podman refuses any port mapping ("PortMappings can only be used with
  Bridge or slirp4netns networking"), and it turns every ``containerPort`` into one: the
  ``ports`` lists are left out and the probes' named port (``http``) becomes the number it names.
  On the host network a container port is simply where the process listens (PORT, from the same
  value), as with ``hostNetwork: true`` in Kubernetes.

Every deployment gets its own DEPLOYMENT, so its topics, consumer groups, HBase tables and cache
keys are its own on the shared stack; its HBase tables are dropped afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.helm import CHART, EXAMPLES, KUBE_VERSIONS, run_helm
from tests.images.test_images import BUILD, http_status, podman_env
from tests.integration.conftest import HBASE_THRIFT_PORT, HOST, KAFKA_PORT, MEMCACHED_PORTS, free_port, require_server

VALUES = EXAMPLES / "single-machine" / "values.yaml"
SERVICES = ("collector", "preprocessor", "trainer", "ranker", "evaluator")
# A cold start on 2 shared cores: importing torch, onnxruntime, connecting to Kafka and HBase.
READY_TIMEOUT_S = float(os.environ.get("SCALEREC_DEPLOY_READY_TIMEOUT", "420"))


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}", pytrace=False)
    return proc


@dataclass
class Deployed:
    """One release of the chart, running in podman pods."""

    release: str
    deployment: str
    objects: list[dict[str, Any]]
    ports: dict[str, int]
    api_key: str
    secrets: dict[str, dict[str, str]]  # name -> key -> value, as the pods read them
    started_s: float = 0.0
    ready_s: dict[str, float] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    def env_value(self, var: dict[str, Any]) -> str | None:
        """What an ``env`` entry of the rendered pod gives the process: its value, or its Secret's."""
        if "value" in var:
            return str(var["value"])
        ref = var["valueFrom"]["secretKeyRef"]
        return self.secrets.get(ref["name"], {}).get(ref["key"])

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def workload(self, service: str) -> dict[str, Any]:
        (found,) = [
            o
            for o in self.objects
            if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] == service
        ]
        return found

    def container(self, service: str) -> str:
        """podman's name for the service's container: <pod>-<container>, the pod being <Deployment>-pod-0."""
        return f"{self.workload(service)['metadata']['name']}-pod-0-{service}"

    def inspect(self, service: str) -> dict[str, Any]:
        return json.loads(podman("container", "inspect", self.container(service)).stdout)[0]  # type: ignore[no-any-return]

    def logs(self, service: str, tail: int = 80) -> str:
        proc = podman("logs", "--tail", str(tail), self.container(service), check=False)
        return (proc.stdout + proc.stderr)[-8000:]

    def all_logs(self) -> str:
        return "\n".join(f"--- {s}\n{self.logs(s, 40)}" for s in SERVICES)


def render(release: str, deployment: str, ports: dict[str, int]) -> list[dict[str, Any]]:
    sets = [
        f"default.env.DEPLOYMENT={deployment}",
        # The stack's addresses as the integration tests know them (SCALEREC_* ports), not hard-coded twice.
        f"kafka.bootstrap={HOST}:{KAFKA_PORT}",
        f"hbase.thrift={HOST}:{HBASE_THRIFT_PORT}",
        "memcached.servers={" + ",".join(f"{HOST}:{p}" for p in MEMCACHED_PORTS) + "}",
        *(f"components.{service}.port={port}" for service, port in ports.items()),
    ]
    args = ["template", release, str(CHART), "--kube-version", f"{KUBE_VERSIONS[0]}.0", "-f", str(VALUES)]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(run_helm(args).stdout) if d]


def for_podman_43(objects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(what kube play gets, the Secrets to create apart): the two translations of the module docstring."""
    play, secrets = [], []
    for obj in objects:
        if obj["kind"] == "Secret":
            secrets.append(obj)
            continue
        if obj["kind"] == "Deployment":
            obj = json.loads(json.dumps(obj))
            for c in obj["spec"]["template"]["spec"]["containers"]:
                named = {p["name"]: p["containerPort"] for p in c.pop("ports", [])}
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    get = c.get(probe, {}).get("httpGet")
                    if get and get["port"] in named:
                        get["port"] = named[get["port"]]
        play.append(obj)
    return play, secrets


def wait_ready(deployed: Deployed) -> None:
    """Every service answers /readyz with 200 (its backends reachable), or the test fails with its logs."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = list(SERVICES)
    while pending and time.monotonic() < deadline:
        for service in list(pending):
            if http_status(deployed.url(service) + "/readyz") == 200:
                deployed.ready_s[service] = round(time.monotonic() - deployed.started_s, 1)
                pending.remove(service)
        time.sleep(1)
    if pending:
        pytest.fail(
            f"not ready after {READY_TIMEOUT_S:.0f}s: {pending}\n"
            + "\n".join(f"--- {s}\n{deployed.logs(s)}" for s in pending),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    require_server("Kafka", KAFKA_PORT, "SCALEREC_KAFKA_PORT")
    require_server("HBase Thrift", HBASE_THRIFT_PORT, "SCALEREC_HBASE_THRIFT_PORT")
    for port in MEMCACHED_PORTS:
        require_server("Memcached", port, "SCALEREC_MEMCACHED_PORTS")
    images = subprocess.run(["bash", str(BUILD), "list"], capture_output=True, text=True, check=True).stdout.split()
    if "trainer" not in images:
        pytest.fail("the trainer image is needed: run with IMAGES=all (make test-deploy does)", pytrace=False)
    release = deployment = f"deploytest{os.getpid()}"
    ports = {service: free_port() for service in SERVICES}
    objects = render(release, deployment, ports)
    play, secrets = for_podman_43(objects)
    folder: Path = tmp_path_factory.mktemp("deploy")
    manifest = folder / "play.yaml"
    manifest.write_text(yaml.safe_dump_all(play, sort_keys=False))
    # The Secrets' data as the pods read them (the chart renders `data`, base64).
    values = {
        s["metadata"]["name"]: {
            **{k: base64.b64decode(v).decode() for k, v in s.get("data", {}).items()},
            **s.get("stringData", {}),
        }
        for s in secrets
    }
    # The key every service gets, as a client would be given it.
    (api_keys,) = [v["api-keys"] for v in values.values() if "api-keys" in v]
    deployed = Deployed(release, deployment, objects, ports, api_keys.split(",")[0].split(":")[0], values)
    volumes = [o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"]
    try:
        for secret in secrets:
            # podman 4.3 reads a secretKeyRef's secret as a JSON map of key -> base64 value (a Secret's `data`).
            data = {k: base64.b64encode(v.encode()).decode() for k, v in secret.get("stringData", {}).items()}
            path = folder / f"{secret['metadata']['name']}.json"
            path.write_text(json.dumps({**secret.get("data", {}), **data}))
            podman("secret", "rm", secret["metadata"]["name"], check=False)
            podman("secret", "create", secret["metadata"]["name"], str(path))
        deployed.started_s = time.monotonic()
        podman("kube", "play", "--network", "host", str(manifest), timeout=600)
        wait_ready(deployed)
        yield deployed
    finally:
        podman("kube", "down", str(manifest), check=False, timeout=300)
        # A pod that never started is left by `kube down`.
        for obj in objects:
            if obj["kind"] == "Deployment":
                podman("pod", "rm", "--force", f"{obj['metadata']['name']}-pod-0", check=False)
        for name in volumes:
            podman("volume", "rm", "--force", name, check=False)
        for secret in secrets:
            podman("secret", "rm", secret["metadata"]["name"], check=False)
        from scalerec_adapters.factory import make_store

        store = make_store(f"hbase://{HOST}:{HBASE_THRIFT_PORT}", namespace=deployment)
        try:
            store.drop_tables()
        finally:
            store.close()
