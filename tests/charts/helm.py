"""Render charts/scalerec offline with a real `helm`; parse, cache and validate the objects.

helm comes from scripts/helm/install-helm.sh (built from the Go module proxy into
${SCALEREC_CACHE:-~/.cache/scalerec}/bin); `make test` runs it first. A missing
helm fails the tests with that instruction instead of skipping them.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "scalerec"
EXAMPLES = CHART / "examples"
RELEASE = "scalerec"
# The oldest Kubernetes the chart supports that kubernetes-validate bundles schemas for,
# and the newest: a field removed or renamed in between fails one of them.
KUBE_VERSIONS = ("1.30", "1.37")

# Scenario name -> extra `helm template` arguments. Examples are the documented ones;
# "everything" turns on every optional template so it is validated too.
SCENARIOS: dict[str, list[str]] = {
    "defaults": [],
    "dev": ["-f", str(EXAMPLES / "dev" / "values.yaml")],
    "prod-gpu": ["-f", str(EXAMPLES / "prod-gpu" / "values.yaml")],
    # Run for real by tests/deploy (podman kube play against the stack).
    "single-machine": ["-f", str(EXAMPLES / "single-machine" / "values.yaml")],
    "everything": [
        "-f",
        str(EXAMPLES / "prod-gpu" / "values.yaml"),
        "-f",
        str(Path(__file__).parent / "values-everything.yaml"),
    ],
}


def helm_binary() -> str:
    candidates = [
        os.environ.get("HELM", ""),
        str(Path(os.environ.get("SCALEREC_CACHE", Path.home() / ".cache" / "scalerec")) / "bin" / "helm"),
        shutil.which("helm") or "",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "helm not found (looked at $HELM, ${SCALEREC_CACHE:-~/.cache/scalerec}/bin/helm and PATH): "
        "run scripts/helm/install-helm.sh first (make test does)",
        pytrace=False,
    )


def run_helm(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm_binary(), *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}", pytrace=False)
    return proc


def template_args(extra: Sequence[str], chart: Path = CHART) -> list[str]:
    return ["template", RELEASE, str(chart), "--namespace", "recs", "--kube-version", f"{KUBE_VERSIONS[0]}.0", *extra]


@dataclass(frozen=True)
class Rendered:
    scenario: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for o in self.of_kind(kind):
            if o["metadata"]["name"] == name:
                return o
        raise KeyError(f"{self.scenario}: no {kind}/{name}; have {[o['metadata']['name'] for o in self.of_kind(kind)]}")


def render(extra: Sequence[str], scenario: str = "custom") -> Rendered:
    out = run_helm(template_args(extra)).stdout
    return Rendered(scenario, [o for o in yaml.safe_load_all(out) if o])


_cache: dict[str, Rendered] = {}


def rendered(scenario: str) -> Rendered:
    if scenario not in _cache:
        _cache[scenario] = render(SCENARIOS[scenario], scenario)
    return _cache[scenario]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload (Deployment, Job, CronJob), else None."""
    kind = obj["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


@functools.cache
def _schema(filename: str, version: str) -> Any:
    return _schema_contents(filename, version)


_schema_contents = kv.schema_contents
# kubernetes-validate re-reads its (multi-megabyte) definitions file for every object;
# the files never change during a run, so read each once.
kv.schema_contents = _schema


def validate_object(obj: dict[str, Any], kube_version: str) -> None:
    """Strict (unknown fields rejected) validation against the bundled Kubernetes schemas."""
    kv.validate(obj, kube_version, strict=True)
