"""The images, built by scripts/images/build.sh and run the way the chart runs them.

For each image the build selects (``IMAGES``, see the script), the container that the chart
renders for it (the dev example: one node, embedded backends, the API key from the chart's
Secret; the Locust master with ``components.loadtests.enabled``) is turned into ``podman run``
flags: its user, group and fsGroup, read-only root filesystem, dropped capabilities, no privilege
escalation, env (Secret references resolved), command, ports, memory limit and volume mounts
(emptyDirs as tmpfs, the shared data claim as a writable tmpfs, the model-repository claim as a
copy of model_repository/, read-only where the chart mounts it so). The container must then
answer its probes' paths with 200, and every module its code reaches must import inside that
same container (tests/images/import_check.py): a dependency the image lacks, or a module that
writes to the read-only filesystem, fails here instead of in a deployment's first minute.

No skips: a missing podman fails, because the build script installs it.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.charts.helm import REPO, SCENARIOS, Rendered, render

BUILD = REPO / "scripts" / "images" / "build.sh"
IMPORT_CHECK = Path(__file__).with_name("import_check.py")
RELEASE = "scalerec"

# Modules an image's code reaches only through a name the service never uses, so its image may
# lack their dependencies (checked by test_unreached_modules_are_not_called). scalerec_adapters.factory
# holds make_bus, make_store, make_cache and make_scorer: only the ranker scores. The trainer
# imports scalerec_models.runtime for a file name; only ModelVersion (load) builds a faiss index.
NOT_REACHED: dict[str, dict[str, str]] = {
    **{
        service: {
            "scalerec_adapters.embedded.onnx_scorer": "make_scorer",
            "scalerec_adapters.triton_scorer": "make_scorer",
        }
        for service in ("collector", "preprocessor")
    },
    "trainer": {"scalerec_models.ann": "ModelVersion"},
}


def selected_images() -> list[str]:
    out = subprocess.run(["bash", str(BUILD), "list"], capture_output=True, text=True, check=True, cwd=REPO)
    return out.stdout.split()


@functools.cache
def podman_env() -> dict[str, str]:
    """This environment plus the CONTAINERS_* files the build script writes (its storage, its VM quirks)."""
    out = subprocess.run(["bash", str(BUILD), "env"], capture_output=True, text=True, check=True, cwd=REPO)
    return {**os.environ, **dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)}


def podman(
    *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout, input=stdin
    )
    if check and proc.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}", pytrace=False)
    return proc


@pytest.fixture(scope="session")
def built() -> list[str]:
    """Every selected image, built (or found up to date: the script reuses the base and cached layers).

    SCALEREC_IMAGES_BUILT=1 (`make test-images`, right after `make images`) skips the script's
    second pass, which costs about 5 s an image even when every layer is cached.
    """
    images = selected_images()
    if os.environ.get("SCALEREC_IMAGES_BUILT") == "1":
        if shutil.which("podman") is None:
            pytest.fail("podman is not on PATH: run scripts/images/build.sh (it installs it)", pytrace=False)
        return images
    proc = subprocess.run(
        ["bash", str(BUILD), "build", *images], capture_output=True, text=True, cwd=REPO, timeout=3 * 3600
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/images/build.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False)
    if shutil.which("podman") is None:
        pytest.fail("podman is not on PATH after scripts/images/build.sh, which installs it", pytrace=False)
    return images


@functools.cache
def chart() -> Rendered:
    """The dev example with the load tests on: every image's workload, as `helm install` would create it."""
    return render([*SCENARIOS["dev"], "--set", "components.loadtests.enabled=true"], "images")


def workload(image: str) -> dict[str, Any]:
    name = f"{RELEASE}-loadtests-master" if image == "loadtests" else f"{RELEASE}-{image}"
    return chart().get("Deployment", name)


def podman_size(quantity: str) -> str:
    """A Kubernetes quantity (256Mi, 2Gi, 500M) as podman takes sizes (binary k/m/g, or bytes)."""
    binary = {"Ki": "k", "Mi": "m", "Gi": "g"}
    decimal = {"k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, unit in binary.items():
        if quantity.endswith(suffix):
            return quantity.removesuffix(suffix) + unit
    for suffix, factor in decimal.items():
        if quantity.endswith(suffix):
            return str(int(float(quantity.removesuffix(suffix)) * factor))
    return quantity


def secret_value(ref: dict[str, str]) -> str:
    secret = chart().get("Secret", ref["name"])
    if ref["key"] in secret.get("stringData", {}):
        return str(secret["stringData"][ref["key"]])
    return base64.b64decode(secret["data"][ref["key"]]).decode()


def claim_size(name: str) -> str:
    return podman_size(chart().get("PersistentVolumeClaim", name)["spec"]["resources"]["requests"]["storage"])


@dataclass(frozen=True)
class Pod:
    """What `podman run` needs, taken from one rendered Deployment."""

    image: str
    env: dict[str, str]
    args: list[str]  # flags before the image
    command: list[str]  # after the image
    uid: int
    ports: dict[str, int]  # port name -> container port
    probe_paths: list[str]  # the path of every httpGet probe, startup first
    start_points: list[str]  # what the import check starts from


def pod(image: str, models: Path) -> Pod:
    spec = workload(image)["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    security = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
    args = ["--pull=never"]

    uid, gid = int(security["runAsUser"]), int(security["runAsGroup"])
    assert not (security.get("runAsNonRoot") and uid == 0), "runAsNonRoot with runAsUser 0"
    args += ["--user", f"{uid}:{gid}"]
    fs_group = security.get("fsGroup")
    if fs_group is not None:
        args += ["--group-add", str(fs_group)]
    if security.get("readOnlyRootFilesystem"):
        # Only what the pod mounts is writable: no tmpfs of podman's own on /tmp, /run, /var/tmp.
        args += ["--read-only", "--read-only-tmpfs=false"]
    assert not security.get("privileged"), "a privileged container"
    for cap in security.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap.lower()]
    for cap in security.get("capabilities", {}).get("add", []):
        args += ["--cap-add", cap.lower()]
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]

    env = {e["name"]: e["value"] if "value" in e else secret_value(e["valueFrom"]["secretKeyRef"]) for e in c["env"]}
    args += [f"--env={name}={value}" for name, value in env.items()]
    memory = c.get("resources", {}).get("limits", {}).get("memory")
    if memory:
        args += ["--memory", podman_size(memory)]

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        v, path, ro = volumes[m["name"]], m["mountPath"], bool(m.get("readOnly"))
        # podman 4.3 ignores a tmpfs's mode= on a path the image already has (/tmp, /data): U makes
        # the mount the container user's, writable as an emptyDir (0777) or a claim under fsGroup is.
        if "emptyDir" in v:
            size = podman_size(v["emptyDir"].get("sizeLimit", "64Mi"))
            if path == "/dev/shm":
                args += ["--shm-size", size]
            else:
                args += ["--tmpfs", f"{path}:{'ro' if ro else 'rw'},size={size},U"]
        elif "persistentVolumeClaim" in v and m["name"] == "data":
            # The shared data claim (embedded bus and store files), as a tmpfs of the claim's size.
            size = claim_size(v["persistentVolumeClaim"]["claimName"])
            args += ["--tmpfs", f"{path}:{'ro' if ro else 'rw'},size={size},U"]
        elif "persistentVolumeClaim" in v and m["name"] == "model-repository":
            args += ["--volume", f"{models}:{path}:{'ro' if ro else 'rw'}"]
        else:
            pytest.fail(f"{image}: no podman equivalent here for volume {v}", pytrace=False)

    ports = {p["name"]: int(p["containerPort"]) for p in c.get("ports", [])}
    for port in ports.values():
        args += ["--publish", f"127.0.0.1::{port}"]
    probe_paths = [
        c[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
        if "httpGet" in c.get(probe, {})
    ]
    command = list(c.get("args", []))
    if c.get("command"):
        args += ["--entrypoint", json.dumps(c["command"])]
    # The import check starts where the container does: the package of `python -m PKG`, or a locustfile.
    locustfiles = [a.split("=", 1)[1] for a in command if a.startswith("--locustfile=")]
    start_points = locustfiles or [f"scalerec_{image}"]
    return Pod(c["image"], env, args, command, uid, ports, probe_paths, start_points)


@dataclass
class Running:
    image: str
    name: str
    pod: Pod
    host_ports: dict[int, int]  # container port -> host port

    def url(self, path: str) -> str:
        port = self.pod.ports.get("http") or next(iter(self.pod.ports.values()))
        return f"http://127.0.0.1:{self.host_ports[port]}{path}"

    def logs(self) -> str:
        proc = podman("logs", "--tail", "60", self.name, check=False)
        return (proc.stdout + proc.stderr)[-6000:]


def fs_group_copy(src: Path, dst: Path, gid: int) -> None:
    """A copy of ``src`` as a claim mounted with fsGroup looks: group ``gid``, group-writable."""
    shutil.copytree(src, dst)
    for path in [dst, *dst.rglob("*")]:
        os.chown(path, 0, gid)
        path.chmod(path.stat().st_mode | 0o070 | (0o2000 if path.is_dir() else 0))


@pytest.fixture(scope="module", params=selected_images())
def running(
    request: pytest.FixtureRequest, built: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    image: str = request.param
    models = tmp_path_factory.mktemp(f"{image}-models") / "model_repository"
    spec = workload(image)["spec"]["template"]["spec"]
    fs_group_copy(REPO / "model_repository", models, int(spec.get("securityContext", {}).get("fsGroup", 0)))
    p = pod(image, models)
    name = f"scalerec-images-test-{image}-{os.getpid()}"
    podman("rm", "--force", "--ignore", name, check=False)
    podman("run", "--detach", "--name", name, *p.args, p.image, *p.command)
    try:
        host_ports = {}
        for port in p.ports.values():
            _, _, host_port = podman("port", name, f"{port}/tcp").stdout.strip().rpartition(":")
            host_ports[port] = int(host_port)
        yield Running(image, name, p, host_ports)
    finally:
        podman("rm", "--force", "--time", "2", name, check=False)


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_answers_its_probes(running: Running) -> None:
    """Every path the chart probes answers 200 within the startup probe's budget (300 s here)."""
    assert running.pod.probe_paths, f"{running.image}: the chart gives it no HTTP probe"
    deadline = time.monotonic() + 300
    for path in dict.fromkeys(running.pod.probe_paths):
        status = None
        while time.monotonic() < deadline:
            status = http_status(running.url(path))
            if status == 200:
                break
            state = podman("inspect", "--format", "{{.State.Status}}", running.name, check=False).stdout.strip()
            if state not in ("running", "created"):
                pytest.fail(f"{running.image} {state} before {path} answered:\n{running.logs()}", pytrace=False)
            time.sleep(0.5)
        assert status == 200, f"{running.image}: GET {path} -> {status}\n{running.logs()}"


def test_runs_as_the_chart_says(running: Running) -> None:
    """Non-root with the chart's uid, and nothing but the mounts is writable."""
    probe = (
        "import os, sys\ntry:\n open(sys.prefix + '/written', 'w')\nexcept OSError as e:\n print(os.getuid(), e.errno)"
    )
    out = podman("exec", running.name, "python", "-c", probe).stdout.split()
    assert out == [str(running.pod.uid), "30"], f"uid and errno (30 = EROFS) expected, got {out}"
    user = podman("image", "inspect", "--format", "{{.Config.User}}", running.pod.image).stdout.strip()
    # runAsNonRoot without runAsUser checks the image's USER: it must be numeric and not 0.
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0, f"image USER {user!r}"


def test_imports_everything_its_code_reaches(running: Running) -> None:
    extra = list(NOT_REACHED.get(running.image, {}))
    args = [*running.pod.start_points, *(["--not-reached", *extra] if extra else [])]
    command = ["exec", "--interactive", running.name, "python", "-", *args]
    proc = podman(*command, stdin=IMPORT_CHECK.read_text(), check=False, timeout=300)
    assert proc.returncode == 0, f"{running.image}: imports failed in the image:\n{proc.stdout}{proc.stderr}"


def test_installs_the_locked_versions(running: Running) -> None:
    """Every third-party package in the image is the version requirements.lock pins (`make lock`)."""
    listing = "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'], d.version)"
    out = podman("exec", running.name, "python", "-c", listing).stdout
    locked = lock_pins()
    # The installer's own tools (never imported by a service) and the workspace's packages are not locked.
    unpinned = {"pip", "wheel", "setuptools"} | {f"scalerec-{n}" for n in ("libs", "cli", running.image)}
    wrong = []
    for line in out.splitlines():
        name, version = line.rsplit(" ", 1)
        name = re.sub(r"[-_.]+", "-", name).lower()
        if name in unpinned:
            continue
        # A local label (torch's +cpu from the CPU index) satisfies the lock's ==X, as pip reads it.
        if locked.get(name) != version.split("+")[0]:
            wrong.append(f"{name} {version} (lock: {locked.get(name, 'not locked')})")
    assert not wrong, f"{running.image}: not the locked versions:\n  " + "\n  ".join(wrong)


@functools.cache
def lock_pins() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", (REPO / "requirements.lock").read_text(), re.M)
    return {re.sub(r"[-_.]+", "-", n).lower(): v for n, v in pins}


@pytest.mark.parametrize("image", sorted(NOT_REACHED))
def test_unreached_modules_are_not_called(image: str) -> None:
    """The modules an image is excused from importing are reached only through functions it never calls."""
    source = "\n".join(p.read_text() for p in (REPO / "services" / image / "src").rglob("*.py"))
    for module, function in NOT_REACHED[image].items():
        assert function not in source, f"{image} calls {function}, so it reaches {module}: its image needs it"


@pytest.mark.parametrize("running", ["ranker"], indirect=True)
def test_ranker_serves_the_champion_from_its_read_only_repository(running: Running) -> None:
    """The ranker's image scores with onnxruntime the champion it reads from the read-only repository mount."""
    test_answers_its_probes(running)
    champion = int((REPO / "model_repository" / "scalerec_ranker" / "champion").read_text().split()[0])
    request = urllib.request.Request(running.url("/v1/model"), headers={"X-API-Key": running.pod.env["API_KEYS"]})
    with urllib.request.urlopen(request, timeout=10) as response:
        model = json.load(response)
    assert (model["model_version"], model["last_error"]) == (champion, None), model
