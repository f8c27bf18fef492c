"""requirements.lock covers every dependency the workspace declares (scripts/lock.py --check).

A dependency added to a pyproject or requirements file without relocking fails here, with the
command to run (`make lock`), before an image or a fresh venv installs an unpinned version.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "lock.py"


@pytest.fixture
def lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scalerec_lock_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lock_covers_every_declared_dependency() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_the_lock_pins_only_third_party_packages_for_linux_and_python_3_11(lock_module: ModuleType) -> None:
    text = (ROOT / "requirements.lock").read_text()
    assert lock_module.TARGET in text.splitlines()
    assert not [line for line in text.splitlines() if line.startswith(("-e", "file:", "./"))], "local paths in the lock"
    pinned = lock_module.pins(text)
    assert not set(pinned) & lock_module.local_names(), "the workspace's own packages are installed from the checkout"
    # What the heavy images and the venv depend on is pinned exactly (numbers, not ranges).
    for name in ("torch", "onnxruntime", "numpy", "fastapi", "aiokafka", "nvidia-pytriton", "uv"):
        assert pinned.get(name, "").replace(".", "").isalnum(), f"{name} is not pinned: {pinned.get(name)}"


def test_a_dependency_added_without_relocking_fails_with_the_command_to_run(
    lock_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "requirements.lock"
    original = (ROOT / "requirements.lock").read_text()
    monkeypatch.setattr(lock_module, "LOCK", lock)
    # A new package nobody locked: drop faiss-cpu's pin, as if libs[serving] had just gained it.
    lock.write_text("\n".join(line for line in original.splitlines() if not line.startswith("faiss-cpu==")))
    problems = lock_module.check()
    assert any(p.startswith("faiss-cpu>=") and "libs[serving]" in p and "not in" in p for p in problems), problems
    # A raised floor the lock no longer meets.
    lock.write_text(original.replace("\nfastapi==", "\nfastapi==0.1.0\nold-fastapi=="))
    problems = lock_module.check()
    assert any(p.startswith("fastapi>=") and "locked at 0.1.0" in p for p in problems), problems
    # The script says what to run.
    monkeypatch.setattr(sys, "argv", ["lock.py", "--check"])
    assert lock_module.main(["--check"]) == 1


def test_relocking_keeps_the_pins_already_there(lock_module: ModuleType) -> None:
    """`make lock` feeds uv the lock as its output file (uv prefers those pins): only new needs move."""
    args = lock_module.compile_args(Path("out.lock"), upgrade=False)
    assert args[args.index("--output-file") + 1] == "out.lock" and "--upgrade" not in args
    assert "--upgrade" in lock_module.compile_args(Path("out.lock"), upgrade=True)
    assert {"--python-version", lock_module.PYTHON_VERSION, "--python-platform", lock_module.PLATFORM} <= set(args)
