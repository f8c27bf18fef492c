"""skaffold.yaml and the Dockerfiles, checked statically (no Docker engine, no skaffold binary here)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.helm import CHART, REPO

SERVICES = ("collector", "preprocessor", "trainer", "ranker", "evaluator")
SKAFFOLD_API = "skaffold/v4beta13"
DOCKERFILE = "services/Dockerfile"  # the one recipe of the five service images
BUILD = REPO / "scripts" / "images" / "build.sh"


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


def build_args(service: str) -> dict[str, str]:
    artifacts = skaffold_configs()["scalerec"]["build"]["artifacts"]
    (artifact,) = [a for a in artifacts if a["image"] == f"scalerec/{service}"]
    return {k: str(v) for k, v in artifact["docker"].get("buildArgs", {}).items()}


def test_every_service_is_an_artifact_of_the_one_dockerfile_built_from_the_repo_root() -> None:
    artifacts = skaffold_configs()["scalerec"]["build"]["artifacts"]
    assert [a["image"] for a in artifacts] == [f"scalerec/{s}" for s in SERVICES]
    components = chart_values()["components"]
    for a in artifacts:
        service = a["image"].split("/")[-1]
        assert a.get("context") == "." and a["docker"]["dockerfile"] == DOCKERFILE, a
        args = build_args(service)
        assert set(args) == {"SERVICE", "EXTRAS", "PORT"}, args
        assert args["SERVICE"] == service
        # The image's PORT (its default when the chart does not set one) is the chart's port.
        assert int(args["PORT"]) == components[service]["port"], (args, components[service]["port"])
        libs = tomllib.loads((REPO / "libs" / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        assert set(args["EXTRAS"].split(",")) <= set(libs), f"{service}: unknown extras {args['EXTRAS']}"
    assert not list((REPO / "services").glob("*/Dockerfile")), "a per-service Dockerfile is back"


def test_the_build_script_reads_the_same_dockerfile_and_build_args_as_skaffold() -> None:
    """scripts/images/build.sh parses skaffold.yaml (no YAML library in bash): it must agree with a YAML parser."""
    for image in (*SERVICES, "loadtests"):
        out = subprocess.run(["bash", str(BUILD), "args", image], capture_output=True, text=True, check=True).stdout
        dockerfile = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("dockerfile ")]
        args = dict(line.split(" ", 1)[1].split("=", 1) for line in out.splitlines() if line.startswith("arg "))
        if image == "loadtests":
            assert dockerfile == ["loadtests/Dockerfile"] and args == {}, out
        else:
            assert dockerfile == [DOCKERFILE] and args == build_args(image), out


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


def test_profiles_pick_example_values_and_one_trainer_image_for_cpu_and_gpu() -> None:
    doc = skaffold_configs()["scalerec"]
    dev = _apply_patches(doc, "dev")["deploy"]["helm"]["releases"][0]
    assert dev["valuesFiles"] == ["charts/scalerec/examples/dev/values.yaml"]
    gpu = _apply_patches(doc, "gpu")
    release = gpu["deploy"]["helm"]["releases"][0]
    assert release["valuesFiles"] == ["charts/scalerec/examples/prod-gpu/values.yaml"]
    # The trainer image is the CUDA build already (PyPI's torch; tests/deploy checks it in the container):
    # the GPU profile builds exactly what the tests ran, with no second recipe that nothing builds.
    assert gpu["build"] == doc["build"]
    assert "TORCH_INDEX" not in build_args("trainer"), "the CPU-only torch index would drop CUDA"
    for path in release["valuesFiles"] + dev["valuesFiles"]:
        assert (REPO / path).is_file()


def test_loadtests_config_runs_only_locust_from_the_locustfile() -> None:
    config = skaffold_configs()["loadtests"]
    (release,) = config["deploy"]["helm"]["releases"]
    assert release["setFiles"] == {"components.loadtests.locustfile": "loadtests/locustfile.py"}
    assert (REPO / "loadtests" / "locustfile.py").is_file()
    # The locustfile imports scalerec_synthetic (libs/): the Locust image is built from loadtests/Dockerfile
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


def test_the_locust_image_needs_libs_and_not_the_cli() -> None:
    """What the locustfile imports of ours lives in libs/, so the image installs libs alone (no CLI, no ML extras)."""
    locustfile = (REPO / "loadtests" / "locustfile.py").read_text()
    ours = set(re.findall(r"^(?:from|import) (scalerec_\w+)", locustfile, re.M))
    assert ours and all((REPO / "libs" / name / "__init__.py").is_file() for name in ours), ours
    dockerfile = (REPO / "loadtests" / "Dockerfile").read_text()
    assert "COPY libs/ libs/" in dockerfile and "cli/" not in dockerfile
    assert "!cli/" not in (REPO / ".dockerignore").read_text().splitlines()


def _stages(dockerfile: Path) -> list[str]:
    return [line for line in dockerfile.read_text().splitlines() if line.startswith("FROM ")]


def test_the_service_dockerfile_is_multi_stage_non_root_and_runs_the_service_it_is_given() -> None:
    text = (REPO / DOCKERFILE).read_text()
    assert len(_stages(REPO / DOCKERFILE)) >= 2 and "COPY --from=wheels /wheels /opt/build/wheels" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: numeric and not root"
    assert not re.search(r"^HEALTHCHECK", text, re.M)
    # Only the service it is given: its folder, its package, its console script as the entry point.
    assert "COPY services/${SERVICE}/ services/${SERVICE}/" in text
    assert '"scalerec-libs[${EXTRAS}]" "scalerec-${SERVICE}"' in text
    assert 'ln -s "scalerec-${SERVICE}" /opt/venv/bin/scalerec-service' in text
    assert 'ENTRYPOINT ["/opt/venv/bin/scalerec-service"]' in text
    assert "PORT=${PORT}" in text and "EXPOSE ${PORT}" in text
    for service in SERVICES:  # what the link points at exists: the pyproject's console script
        scripts = tomllib.loads((REPO / "services" / service / "pyproject.toml").read_text())["project"]["scripts"]
        assert scripts[f"scalerec-{service}"] == f"scalerec_{service}.__main__:main"


@pytest.mark.parametrize("service", ["collector", "preprocessor"])
def test_light_images_carry_no_torch_or_onnxruntime(service: str) -> None:
    extras = set(build_args(service)["EXTRAS"].split(","))
    assert not extras & {"ml", "serving"}, extras  # ml = torch, serving = onnxruntime
    pyproject = (REPO / "services" / service / "pyproject.toml").read_text()
    assert "torch" not in pyproject and "onnxruntime" not in pyproject and "[ml" not in pyproject


def _image_requirements(service: str, extras: str | None = None) -> subprocess.CompletedProcess[str]:
    script = REPO / "services" / "image_requirements.py"
    extras = build_args(service)["EXTRAS"] if extras is None else extras
    args = [str(REPO / "libs" / "pyproject.toml"), extras, str(REPO / "services" / service / "pyproject.toml")]
    return subprocess.run(["python3", str(script), *args], capture_output=True, text=True, check=False)


def _names(lines: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", line, maxsplit=1)[0].lower() for line in lines}


@pytest.mark.parametrize("service", SERVICES)
def test_the_dependency_layer_asks_for_what_the_image_installs_and_nothing_of_ours(service: str) -> None:
    """What services/Dockerfile installs before copying our code: libs' dependencies, its extras' (the
    build's EXTRAS and those the service's pyproject asks for) and the service's own, never a scalerec
    package; the image build's `pip check` proves at build time that nothing is missing."""
    run = _image_requirements(service)
    assert run.returncode == 0, run.stderr
    names = _names(run.stdout.split())
    libs = tomllib.loads((REPO / "libs" / "pyproject.toml").read_text())["project"]
    extras = set(build_args(service)["EXTRAS"].split(","))
    service_deps = tomllib.loads((REPO / "services" / service / "pyproject.toml").read_text())["project"]
    for dep in service_deps["dependencies"]:
        if dep.startswith("scalerec-libs["):
            extras |= set(dep[len("scalerec-libs[") : dep.index("]")].split(","))
    expected = [*libs["dependencies"], *(d for e in extras for d in libs["optional-dependencies"][e])]
    expected += [d for d in service_deps["dependencies"] if not d.startswith("scalerec-")]
    assert names == _names(expected)
    assert not any(n.startswith("scalerec") for n in names)
    assert ("torch" in names) == (service == "trainer")  # the collector's and preprocessor's stay light


def test_the_dependency_layer_refuses_an_extra_libs_does_not_have() -> None:
    run = _image_requirements("collector", "kafka,no-such-extra")
    assert run.returncode != 0 and "no extra no-such-extra" in run.stderr


def test_our_code_is_copied_after_the_dependency_layer() -> None:
    """A change to libs/ or a service must not invalidate the layer that installs torch and the rest."""
    full = (REPO / DOCKERFILE).read_text()
    text = full[full.index("AS runtime") :]  # the wheels stage builds our code; the runtime stage installs it
    deps = text.index("--requirement /tmp/requirements.txt")
    assert "COPY libs/ libs/" not in text and "COPY services/${SERVICE}/ services/${SERVICE}/" not in text
    before = [line for line in text[:deps].splitlines() if line.startswith("COPY ")]
    assert before == [
        "COPY requirements.lock ./",
        "COPY services/image_requirements.py /tmp/image_requirements.py",
        "COPY libs/pyproject.toml libs/pyproject.toml",
        "COPY services/${SERVICE}/pyproject.toml services/${SERVICE}/pyproject.toml",
    ]
    assert "--no-deps --no-index --find-links wheels" in text and "pip check" in text
    assert text.index("COPY --from=wheels") > deps


def test_the_runtime_stage_installs_the_dependencies_itself() -> None:
    """No venv is copied from stage to stage: a copied venv is a second layer as large as the first
    (the trainer's torch and CUDA wheels: 6 GB) and was made again for every change to our code, which
    filled a CI machine's disk. The runtime stage installs the dependencies, then only our two wheels."""
    text = (REPO / DOCKERFILE).read_text()
    runtime = text[text.index("AS runtime") :]
    assert "--requirement /tmp/requirements.txt" in runtime
    assert not re.search(r"^COPY --from=\S+ /opt/venv", text, re.M)
    (copied,) = re.findall(r"^COPY --from=(\S+) (\S+)", runtime, re.M)
    assert copied == ("wheels", "/wheels")
    wheels = text[text.index("AS wheels") : text.index("AS runtime")]
    assert "pip wheel" in wheels and "--no-deps" in wheels and "--requirement" not in wheels


IMAGE_DOCKERFILES = (DOCKERFILE, "loadtests/Dockerfile")


@pytest.mark.parametrize("dockerfile", IMAGE_DOCKERFILES)
def test_every_image_installs_with_the_lock_as_constraints(dockerfile: str) -> None:
    """An image built next month gets the versions the tests passed with (requirements.lock, `make lock`)."""
    text = (REPO / dockerfile).read_text()
    assert "COPY requirements.lock ./" in text
    installs = re.findall(r"pip (?:install|wheel)\b[^\n]*", text)
    assert installs
    for line in installs:
        assert "--constraint requirements.lock" in line or "--no-deps" in line or "--no-index" in line, line


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, "loadtests/Dockerfile"])
def test_images_start_from_our_base_at_a_fixed_tag(dockerfile: str) -> None:
    """The base is the one scripts/images/build.sh makes, named by a fixed tag that the script reads from here."""
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", (REPO / dockerfile).read_text(), re.M)
    (ours,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", (REPO / DOCKERFILE).read_text(), re.M)
    assert base == ours and base.startswith("localhost/scalerec/python:"), base
    tag = base.rpartition(":")[2]
    assert re.fullmatch(r"\d+\.\d+-bookworm-\d+", tag), f"{base}: a fixed tag (python-debian-revision), not {tag}"
    assert all("${PYTHON_IMAGE}" in stage for stage in _stages(REPO / dockerfile))
    script = BUILD.read_text()
    assert "sed -n 's/^ARG PYTHON_IMAGE=//p' \"$REPO/services/Dockerfile\"" in script


def test_dockerignore_keeps_the_context_to_the_lock_libs_and_services() -> None:
    lines = [x.strip() for x in (REPO / ".dockerignore").read_text().splitlines()]
    assert lines[lines.index("*") :].count("!libs/") == 1 and "!services/" in lines
    assert "!requirements.lock" in lines
    assert "services/*/README.md" in lines  # docs edits leave every install layer cached
