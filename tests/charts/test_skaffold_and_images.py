"""skaffold.yaml and the Dockerfiles, checked statically (no Docker engine, no skaffold binary here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.helm import CHART, REPO

SERVICES = ("collector", "preprocessor", "trainer", "ranker", "evaluator")
SKAFFOLD_API = "skaffold/v4beta13"


def skaffold_configs() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((REPO / "skaffold.yaml").read_text()) if d]
    return {d["metadata"]["name"]: d for d in docs}


def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def template_key(image: str) -> str:
    """skaffold's template name for an artifact: '/', '-' and '.' become '_'."""
    return re.sub(r"[/\-.]", "_", image)


def test_configs_use_the_current_schema_and_loadtests_requires_the_app() -> None:
    configs = skaffold_configs()
    assert set(configs) == {"scalerec", "loadtests"}
    for c in configs.values():
        assert c["apiVersion"] == SKAFFOLD_API and c["kind"] == "Config"
    assert {"configs": ["scalerec"]} in configs["loadtests"]["requires"]


def test_every_service_is_an_artifact_built_from_the_repo_root() -> None:
    artifacts = skaffold_configs()["scalerec"]["build"]["artifacts"]
    assert [a["image"] for a in artifacts] == [f"scalerec/{s}" for s in SERVICES]
    for a in artifacts:
        assert a.get("context") == "."
        assert (REPO / a["docker"]["dockerfile"]).is_file(), a


def test_every_built_image_is_set_in_the_helm_values() -> None:
    config = skaffold_configs()["scalerec"]
    (release,) = config["deploy"]["helm"]["releases"]
    assert (REPO / release["chartPath"] / "Chart.yaml").is_file()
    templates = release["setValueTemplates"]
    components = chart_values()["components"]
    for a in config["build"]["artifacts"]:
        key = template_key(a["image"])
        service = a["image"].split("/")[-1]
        assert service in components, f"no chart component for {a['image']}"
        assert templates[f"components.{service}.image.repository"] == f"{{{{.IMAGE_REPO_{key}}}}}"
        assert templates[f"components.{service}.image.tag"].startswith(f"{{{{.IMAGE_TAG_{key}}}}}")


def _apply_patches(doc: dict[str, Any], profile: str) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(doc)
    (p,) = [p for p in doc["profiles"] if p["name"] == profile]
    for patch in p["patches"]:
        *parents, leaf = [int(x) if x.isdigit() else x for x in patch["path"].strip("/").split("/")]
        node: Any = out
        for part in parents:
            node = node[part]
        node[leaf] = patch["value"]
    return out


def test_profiles_pick_example_values_and_the_cuda_trainer() -> None:
    doc = skaffold_configs()["scalerec"]
    dev = _apply_patches(doc, "dev")["deploy"]["helm"]["releases"][0]
    assert dev["valuesFiles"] == ["charts/scalerec/examples/dev/values.yaml"]
    gpu = _apply_patches(doc, "gpu")
    release = gpu["deploy"]["helm"]["releases"][0]
    assert release["valuesFiles"] == ["charts/scalerec/examples/prod-gpu/values.yaml"]
    dockerfiles = {a["image"]: a["docker"]["dockerfile"] for a in gpu["build"]["artifacts"]}
    assert dockerfiles["scalerec/trainer"] == "services/trainer/Dockerfile.cuda"
    for path in release["valuesFiles"] + dev["valuesFiles"]:
        assert (REPO / path).is_file()


def test_loadtests_config_runs_only_locust_from_the_locustfile() -> None:
    config = skaffold_configs()["loadtests"]
    (release,) = config["deploy"]["helm"]["releases"]
    assert release["setFiles"] == {"components.loadtests.locustfile": "loadtests/locustfile.py"}
    assert (REPO / "loadtests" / "locustfile.py").is_file()
    # The locustfile imports scalerec_cli: the Locust image is built from loadtests/Dockerfile
    # (owned with loadtests/), from the repository root like the service images.
    (artifact,) = config["build"]["artifacts"]
    assert artifact["image"] == "scalerec/loadtests" and artifact["context"] == "."
    assert artifact["docker"]["dockerfile"] == "loadtests/Dockerfile"
    key = template_key(artifact["image"])
    assert release["setValueTemplates"]["components.loadtests.image.repository"] == f"{{{{.IMAGE_REPO_{key}}}}}"
    values = release["setValues"]
    assert values["components.loadtests.enabled"] is True
    for s in SERVICES:
        assert values[f"components.{s}.enabled"] is False


def _stages(dockerfile: Path) -> list[str]:
    return [line for line in dockerfile.read_text().splitlines() if line.startswith("FROM ")]


@pytest.mark.parametrize(
    "dockerfile",
    [f"services/{s}/Dockerfile" for s in SERVICES] + ["services/trainer/Dockerfile.cuda"],
)
def test_dockerfile_is_multi_stage_non_root_and_runs_the_service(dockerfile: str) -> None:
    path = REPO / dockerfile
    text = path.read_text()
    service = path.parent.name
    assert len(_stages(path)) >= 2 and "COPY --from=builder /opt/venv /opt/venv" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: numeric and not root"
    assert not re.search(r"^HEALTHCHECK", text, re.M)
    assert f'ENTRYPOINT ["python", "-m", "scalerec_{service}"]' in text
    assert f"COPY services/{service}/ services/{service}/" in text
    others = [s for s in SERVICES if s != service]
    assert not any(f"services/{o}" in text for o in others), "copies another service"


@pytest.mark.parametrize("service", ["collector", "preprocessor"])
def test_light_images_carry_no_torch_or_onnxruntime(service: str) -> None:
    text = (REPO / "services" / service / "Dockerfile").read_text()
    extras = set(re.findall(r'"\./libs\[([^\]]*)\]"', text)[0].split(","))
    assert not extras & {"ml", "serving"}, extras  # ml = torch, serving = onnxruntime
    pyproject = (REPO / "services" / service / "pyproject.toml").read_text()
    assert "torch" not in pyproject and "onnxruntime" not in pyproject and "[ml" not in pyproject


def test_cuda_trainer_starts_from_an_nvidia_cuda_runtime() -> None:
    stages = _stages(REPO / "services" / "trainer" / "Dockerfile.cuda")
    text = (REPO / "services" / "trainer" / "Dockerfile.cuda").read_text()
    (base,) = re.findall(r"^ARG CUDA_IMAGE=(\S+)", text, re.M)
    assert base.startswith("nvidia/cuda:") and "runtime" in base
    assert all("${CUDA_IMAGE}" in s for s in stages)


def test_dockerignore_keeps_the_context_to_libs_and_services() -> None:
    lines = [x.strip() for x in (REPO / ".dockerignore").read_text().splitlines()]
    assert lines[lines.index("*") :].count("!libs/") == 1 and "!services/" in lines
