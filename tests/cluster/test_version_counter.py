"""Model version numbers across copies of the repository (object storage), on the real API server.

The chart, installed with ``modelRepository.type=objectStorage``, makes the trainer's counter ConfigMap and
a Role that lets the trainer's service account read and update that one object; the trainer
(``scalerec_models.version_counter``) takes each version number there by compare-and-swap. Here the
counter runs with that service account's own token (``kubectl create token``), as the pod's projected
token, so what is proven is the chart's RBAC as much as the counter: concurrent writers never get the same
number, two copies of a repository number their versions apart, the account can do nothing else, and a
``helm upgrade`` keeps the count.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from scalerec_models.version_counter import KubernetesVersionCounter, VersionCounterError
from scalerec_models.versions import allocate_version

from tests.cluster.kube import CHART, RELEASE, Cluster, fresh_namespace

NAMESPACE = "version-counter"
TRAINER = f"{RELEASE}-trainer"
CONFIG_MAP = f"{TRAINER}-model-versions"
VALUES = [
    "--set", "modelRepository.type=objectStorage",
    "--set", "modelRepository.objectStorage.remote=:s3\\,provider=Minio:models",
    "--set", "kafka.bootstrap=kafka:9092",
    "--set", "hbase.thrift=hbase:9090",
    "--set", "persistence.data.shared=false",
    "--set", "apiKeys.keys={k1}",
    *[a for c in ("collector", "preprocessor", "ranker", "evaluator") for a in ("--set", f"components.{c}.enabled=false")],
]  # fmt: skip


@dataclass(frozen=True)
class Api:
    url: str
    ca_file: Path
    token_file: Path

    def counter(self, name: str = CONFIG_MAP, **kwargs: Any) -> KubernetesVersionCounter:
        return KubernetesVersionCounter(self.url, NAMESPACE, name, self.token_file, self.ca_file, **kwargs)


@pytest.fixture(scope="module")
def api(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The chart installed (the trainer alone; its pods need not run), and the trainer account's token."""
    fresh_namespace(cluster, NAMESPACE)
    cluster.helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, *VALUES)
    folder = tmp_path_factory.mktemp("api")
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    (entry,) = config["clusters"]
    ca_file = folder / "ca.crt"
    ca_file.write_bytes(base64.b64decode(entry["cluster"]["certificate-authority-data"]))
    token_file = folder / "token"
    token = cluster.kubectl("-n", NAMESPACE, "create", "token", TRAINER, "--duration=1h").stdout.strip()
    token_file.write_text(token)
    try:
        yield Api(entry["cluster"]["server"], ca_file, token_file)
    finally:
        cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, check=False)
        cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)


def _count(cluster: Cluster) -> str | None:
    found = cluster.get("configmap", NAMESPACE, CONFIG_MAP)
    return (found.get("data") or {}).get("last_version")


def test_concurrent_writers_never_share_a_version_number(cluster: Cluster, api: Api) -> None:
    start = api.counter().check()
    got: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer() -> None:
        counter = api.counter()
        try:
            for _ in range(10):
                version = counter.reserve(1)
                with lock:
                    got.append(version)
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(got) == len(set(got)) == 40, "every number handed out once"
    assert min(got) > start
    assert _count(cluster) == str(max(got))


def test_two_copies_of_the_repository_number_their_versions_apart(api: Api, tmp_path: Path) -> None:
    """Two pods' copies, synced at the same moment (the same versions on disk): each run gets its own number,
    and a copy that has seen a higher number than the counter (a bucket restored, a counter recreated)
    still goes above it."""
    first, second = tmp_path / "pod-a", tmp_path / "pod-b"
    with allocate_version(first, counter=api.counter()) as a, allocate_version(second, counter=api.counter()) as b:
        assert a.version != b.version
    (second / ".last_version").write_text(f"{b.version + 500}\n")
    with allocate_version(second, counter=api.counter()) as c:
        assert c.version == b.version + 501
    with allocate_version(first, counter=api.counter()) as d:
        assert d.version == c.version + 1, "the counter, not pod-a's own copy, decides"


def test_the_trainers_account_may_touch_its_counter_and_nothing_else(cluster: Cluster, api: Api) -> None:
    account = f"system:serviceaccount:{NAMESPACE}:{TRAINER}"

    def can(*what: str) -> bool:
        proc = cluster.kubectl("auth", "can-i", *what, "-n", NAMESPACE, f"--as={account}", check=False)
        return proc.stdout.strip() == "yes"

    assert can("get", f"configmap/{CONFIG_MAP}") and can("update", f"configmap/{CONFIG_MAP}")
    for verb in ("patch", "delete"):
        assert not can(verb, f"configmap/{CONFIG_MAP}"), verb
    for verb in ("list", "create", "watch"):
        assert not can(verb, "configmaps"), verb
    for what in ("configmap/kube-root-ca.crt", "secrets", "pods", "leases.coordination.k8s.io"):
        assert not can("get", what), what
    # And with its own token, as the counter calls the API: someone else's ConfigMap, one it would have to create.
    for other in ("kube-root-ca.crt", "not-there"):
        with pytest.raises(VersionCounterError, match=r"refused .*HTTP 403"):
            api.counter(other, deadline_s=5).reserve(1)


def test_a_helm_upgrade_keeps_the_count(cluster: Cluster, api: Api) -> None:
    version = api.counter().reserve(1)
    cluster.helm("upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, *VALUES, "--set", "default.podLabels.x=y")
    assert _count(cluster) == str(version)
    assert api.counter().reserve(1) == version + 1


def test_from_a_pods_mount_the_counter_finds_the_api_server_token_and_namespace(
    cluster: Cluster, api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the chart mounts at /var/run/secrets/kubernetes.io/serviceaccount (token, the namespace's
    kube-root-ca.crt, the namespace) and the Service environment every pod gets are all it needs. (Laid out
    by hand here, with the API server's address from outside: kwok's nodes run no containers, so no pod of
    this cluster mounts it for real.)"""
    root_ca = cluster.get("configmap", NAMESPACE, "kube-root-ca.crt")["data"]["ca.crt"]
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(api.token_file.read_text())
    (account / "ca.crt").write_text(root_ca)
    (account / "namespace").write_text(NAMESPACE)
    host, port = api.url.removeprefix("https://").rsplit(":", 1)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    counter = KubernetesVersionCounter.in_cluster(CONFIG_MAP, service_account_dir=account)
    assert counter.reserve(1) == counter.check()
    deployment = cluster.get("deployment", NAMESPACE, TRAINER)
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODEL_VERSION_COUNTER"] == f"kubernetes:configmap/{CONFIG_MAP}"
