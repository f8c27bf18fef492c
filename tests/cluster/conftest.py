"""Session fixtures: the control plane (scripts/cluster/cluster.sh up) and the chart's examples
installed on it with `helm install --wait`, each in its own namespace.

No skips: a machine without the binaries builds them (the script does, once; minutes). The cluster
is stopped again at the end if this session started it, and left alone if it was already up.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.kube import (
    CLUSTER_SH,
    REPO,
    Cluster,
    Release,
    cluster_sh,
    example_values,
    fresh_namespace,
    poll_until,
    provision_volumes,
    rendered_claims,
    rolled_out,
)

# The prod-gpu example names a Secret it expects to exist (apiKeys.existingSecret).
PROD_API_KEYS_SECRET = "scalerec-api-keys"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    was_up = subprocess.run(["bash", str(CLUSTER_SH), "status"], capture_output=True, cwd=REPO).returncode == 0
    env = dict(line.split("=", 1) for line in cluster_sh("up").splitlines() if "=" in line)
    try:
        yield Cluster(Path(env["KUBECONFIG"]))
    finally:
        if not was_up:
            cluster_sh("down", timeout=180)


def volumes_root() -> Path:
    return REPO / "var" / "cluster" / "volumes"


def install(cluster: Cluster, namespace: str, example: str, *extra: Path) -> Release:
    """`helm install --wait` the example into a fresh namespace, with what the example says it needs
    beforehand: volumes for its claims (no dynamic provisioner here) and, for prod, its keys Secret."""
    values = (example_values(example), *extra)
    fresh_namespace(cluster, namespace)
    provision_volumes(cluster, namespace, rendered_claims(cluster, namespace, values), volumes_root())
    if example == "prod-gpu":
        cluster.kubectl(
            "create", "secret", "generic", PROD_API_KEYS_SECRET, "-n", namespace, "--from-literal=api-keys=prod-key"
        )
    release = Release(cluster, namespace, example, values)
    release.helm("install", release.name, "charts/scalerec", *release.value_args(), "--wait", "--timeout", "5m")
    poll_until(f"{namespace}: every Deployment rolled out", lambda: rolled_out(release), timeout=120)
    return release


@pytest.fixture(scope="session")
def dev(cluster: Cluster) -> Release:
    return install(cluster, "scalerec-dev", "dev")


@pytest.fixture(scope="session")
def prod(cluster: Cluster) -> Release:
    return install(cluster, "scalerec-prod", "prod-gpu")


@pytest.fixture(scope="session", params=["dev", "prod-gpu"])
def release(request: pytest.FixtureRequest) -> Release:
    """Each installed example in turn."""
    fixture = "dev" if request.param == "dev" else "prod"
    r: Release = request.getfixturevalue(fixture)
    return r
