"""Run a real ``tritonserver`` on this machine, without Docker, from the ``nvidia-pytriton`` wheel.

Why this exists: CI and laptops have no Docker engine and often no GPU, yet the Triton
scorer must be tested against the real server (model control, dynamic batching,
statistics, version policies).  The ``nvidia-pytriton`` wheel carries a real
Triton 2.51 binary with the Python backend; this module wires it up:

* a copy of the wheel's ``tritonserver/backends/`` with the Python-backend stub for the
  running Python placed in ``python/`` (passed as ``--backend-directory``);
* ``LD_LIBRARY_PATH`` = this interpreter's ``LIBDIR`` (the stub must load the same
  libpython as the venv, e.g. pyenv's) followed by the wheel's ``nvidia_pytriton.libs``;
* the venv's ``bin`` first on ``PATH`` so the stub imports the venv's packages.

That build has no onnxruntime backend, so :func:`make_python_backend_repository`
derives a serving repository from the real one: same models, versions, inputs,
outputs, version policy and dynamic batching, with ``backend: "python"`` and a
``model.py`` (``python_model.py`` here) that runs the very same ``model.onnx`` with
onnxruntime.  Production uses the generated onnxruntime config on GPU.

Use it as a library (``run_triton_server()`` context manager, modelled on NVIDIA
Merlin's) or as the start script::

    .venv/bin/python scripts/triton/local_server.py --model-repository model_repository \\
        [--python-backend] [--grpc-port 8001 --http-port 8000 --metrics-port 8002]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON_MODEL_TEMPLATE = HERE / "python_model.py"


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel keeps the pieces a bare ``tritonserver`` run needs."""

    binary: Path
    backends: Path
    stub: Path
    libs: Path


@dataclass(frozen=True)
class TritonServer:
    """A running server: gRPC/HTTP addresses for clients, the process to stop."""

    grpc_url: str
    http_url: str
    metrics_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def find_tritonserver() -> TritonInstall:
    """Locate the binary, backends, stub and bundled libraries in the installed nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: run `.venv/bin/pip install nvidia-pytriton`")
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        backends=root / "backends",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=package.parent / "nvidia_pytriton.libs",
    )
    for path in (install.binary, install.backends, install.stub, install.libs):
        if not path.exists():
            raise RuntimeError(f"nvidia-pytriton wheel lacks {path} (Python {version} supported?)")
    return install


def prepare_backend_directory(install: TritonInstall, target: Path) -> Path:
    """Copy the wheel's backends and put the Python-backend stub for this Python next to libtriton_python.so."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(install.backends, target, ignore=shutil.ignore_patterns("__pycache__"))
    stub = target / "python" / "triton_python_backend_stub"
    shutil.copy2(install.stub, stub)
    stub.chmod(0o755)
    return target


def server_environment(install: TritonInstall) -> dict[str, str]:
    """Environment for tritonserver and its Python stubs (see module docstring for why each part)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    parts = [libdir, str(install.libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in parts if p)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '')}"
    # The stub's interpreter finds the venv through these even when it is not activated.
    env.setdefault("VIRTUAL_ENV", str(Path(sys.executable).parent.parent))
    env["PYTHONNOUSERSITE"] = "1"
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_python_backend_repository(
    source: Path, target: Path, *, kind: str = "KIND_CPU", max_queue_delay_us: int | None = None
) -> Path:
    """Mirror ``source`` (onnxruntime configs) as a Python-backend repository at ``target``.

    ``max_queue_delay_us`` overrides the cards' batching delay (tests on a loaded 2-core machine
    use a longer one so concurrent requests reliably meet in the queue).
    Idempotent, so a test can call it again after adding a version or changing the
    served versions.  ONNX files are hard-linked (or symlinked/copied) rather than
    re-exported: Triton serves the exact bytes the trainer wrote.
    """
    if importlib.util.find_spec("scalerec_models") is None:  # run as a plain script without the libs installed
        sys.path.insert(0, str(HERE.parents[1] / "libs"))
    from scalerec_models.repository import (
        CARD_FILE,
        ServingOptions,
        config_pbtxt,
        list_versions,
        read_card,
        read_served_versions,
        tensor_specs_from_onnx,
    )

    target.mkdir(parents=True, exist_ok=True)
    for model_dir in sorted(p for p in Path(source).iterdir() if p.is_dir() and not p.name.startswith(".")):
        model = model_dir.name
        versions = list_versions(source, model)
        served = read_served_versions(source, model) or versions[-1:]
        if not served:
            continue
        out = target / model
        out.mkdir(exist_ok=True)
        for v in versions:
            vdir = out / str(v)
            if vdir.exists():
                # Keep the template current (atomic replace) but never touch the served ONNX bytes.
                tmp_py = vdir / ".model.py.tmp"
                shutil.copy2(PYTHON_MODEL_TEMPLATE, tmp_py)
                os.replace(tmp_py, vdir / "model.py")
                continue
            staging = out / f".staging-{v}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            for f in (model_dir / str(v)).iterdir():
                if f.is_file() and (f.name.startswith("model.onnx") or f.name == CARD_FILE):
                    try:
                        os.link(f, staging / f.name)
                    except OSError:
                        shutil.copy2(f, staging / f.name)
            shutil.copy2(PYTHON_MODEL_TEMPLATE, staging / "model.py")
            os.rename(staging, vdir)
        newest = model_dir / str(served[-1]) / "model.onnx"
        inputs, outputs = tensor_specs_from_onnx(newest)
        options = ServingOptions.from_card(read_card(source, model, served[-1]))
        if max_queue_delay_us is not None:
            options = dataclasses.replace(options, max_queue_delay_microseconds=max_queue_delay_us)
        text = config_pbtxt(
            model,
            inputs,
            outputs,
            versions=served,
            options=options,
            kind=kind,
            backend="python",
        )
        tmp = out / ".config.pbtxt.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / "config.pbtxt")
    return target


def _ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def start_triton_server(
    repository: Path,
    *,
    work_dir: Path,
    model_control: str = "explicit",
    load_models: Sequence[str] = (),
    grpc_port: int | None = None,
    http_port: int | None = None,
    metrics_port: int | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 60.0,
) -> TritonServer:
    """Start tritonserver and wait for ``/v2/health/ready``; the caller must :func:`stop_triton_server`."""
    install = find_tritonserver()
    backends = prepare_backend_directory(install, work_dir / "backends")
    grpc_port = grpc_port or free_port()
    http_port = http_port or free_port()
    metrics_port = metrics_port or free_port()
    log_path = work_dir / "tritonserver.log"
    args = [
        str(install.binary),
        f"--model-repository={Path(repository).resolve()}",
        f"--backend-directory={backends}",
        f"--model-control-mode={model_control}",
        f"--grpc-port={grpc_port}",
        f"--http-port={http_port}",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        "--log-verbose=0",
        # Exit quickly on SIGTERM: a test run must not hang on in-flight requests of a dead client.
        "--exit-timeout-secs=5",
        *[f"--load-model={m}" for m in load_models],
        *extra_args,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=server_environment(install), start_new_session=True
        )
    server = TritonServer(
        grpc_url=f"127.0.0.1:{grpc_port}",
        http_url=f"127.0.0.1:{http_port}",
        metrics_url=f"127.0.0.1:{metrics_port}",
        process=process,
        log_path=log_path,
    )
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {process.returncode}:\n{server.log()[-4000:]}")
        if _ready(server.http_url):
            return server
        time.sleep(0.1)
    stop_triton_server(server)
    raise RuntimeError(f"tritonserver not ready after {startup_timeout}s:\n{server.log()[-4000:]}")


def stop_triton_server(server: TritonServer, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL of the server's own process group (its Python stubs included)."""
    process = server.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    # Stubs are in the same session; make sure none outlives the server.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def run_triton_server(repository: Path, **kwargs: object) -> Iterator[TritonServer]:
    """Start tritonserver on free ports, wait until ready, always stop it (Merlin's ``run_triton_server``)."""
    with tempfile.TemporaryDirectory(prefix="scalerec-triton-") as tmp:
        server = start_triton_server(repository, work_dir=Path(tmp), **kwargs)  # type: ignore[arg-type]
        try:
            yield server
        finally:
            stop_triton_server(server)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--python-backend",
        action="store_true",
        help="serve a Python-backend mirror of the repository (this Triton build has no onnxruntime backend)",
    )
    parser.add_argument("--work-dir", type=Path, default=Path("var/triton"))
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--load-model", action="append", default=[], help="model to load at start (repeatable)")
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    repository = args.model_repository
    if args.python_backend:
        repository = make_python_backend_repository(repository, args.work_dir / "python_repository")
    server = start_triton_server(
        repository,
        work_dir=args.work_dir,
        load_models=args.load_model,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
    )
    print(f"tritonserver ready: grpc {server.grpc_url} http {server.http_url} (log {server.log_path})", flush=True)
    stop = [False]

    def _stop(*_: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop[0] and server.process.poll() is None:
            time.sleep(0.5)
    finally:
        stop_triton_server(server)
    return server.process.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
