"""requirements.lock: every third-party package of the workspace, pinned, for Linux x86_64 and Python 3.11.

The venv (`make venv`) and every image install with it as pip constraints, so an image built next
month gets the versions the tests passed with. It is resolved by uv from what the repository
declares: every pyproject (libs/ with all its extras, services/*, cli/), requirements-dev.txt, and
requirements-nodeps.txt (packages installed with --no-deps, resolved apart and appended).

    make lock                        # relock after adding or changing a dependency (keeps every other pin)
    make lock UPGRADE=1              # move every pin to the newest allowed version
    python scripts/lock.py --check   # fail if a declared dependency is not in the lock (the tests run it)

Relocking keeps the versions already in the lock (uv prefers the pins of its output file) and only
resolves what is new or no longer satisfied. Needs uv and packaging (requirements-dev.txt): run it with the venv's Python.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
DEV = ROOT / "requirements-dev.txt"
NODEPS = ROOT / "requirements-nodeps.txt"
PROJECTS = [ROOT / "libs", *sorted((ROOT / "services").glob("*/")), ROOT / "cli"]
# The machines the lock is for: CI, the dev venv and every image (Debian bookworm, glibc 2.36).
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_36"
COMMAND = "make lock"
NODEPS_HEADER = "# --no-deps (requirements-nodeps.txt), resolved apart:"
TARGET = f"# For Python {PYTHON_VERSION} on {PLATFORM}: scripts/lock.py resolved it with uv."
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def projects() -> list[tuple[Path, dict[str, object]]]:
    return [(p, tomllib.loads((p / "pyproject.toml").read_text())["project"]) for p in PROJECTS]


def local_names() -> set[str]:
    """The workspace's own distributions: installed from the checkout, never pinned."""
    return {canonical(str(project["name"])) for _, project in projects()}


def requirement_lines(path: Path) -> list[str]:
    """The requirements of a requirements file: comments, blank lines and options left out."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            lines.append(line)
    return lines


def declared() -> dict[str, list[str]]:
    """Every third-party requirement the workspace declares -> where: ``{'torch>=2.3': ['libs[ml]']}``."""
    found: dict[str, list[str]] = {}
    ours = local_names()
    for path, project in projects():
        where = path.relative_to(ROOT).as_posix()
        groups = {"": project.get("dependencies", []), **project.get("optional-dependencies", {})}  # type: ignore[dict-item]
        for extra, reqs in groups.items():
            for req in reqs:
                match = _NAME.match(req)
                if match and canonical(match.group(1)) not in ours:
                    found.setdefault(req, []).append(f"{where}[{extra}]" if extra else where)
    for path in (DEV, NODEPS):
        for req in requirement_lines(path):
            found.setdefault(req, []).append(path.name)
    return found


def pins(text: str) -> dict[str, str]:
    """name -> version of every ``name==version`` line of a lock."""
    out = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            out[canonical(match.group(1))] = match.group(2)
    return out


def uv() -> str:
    for candidate in (os.environ.get("UV", ""), str(Path(sys.executable).parent / "uv"), shutil.which("uv") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    sys.exit("uv not found: it is in requirements-dev.txt (make venv), or pip install uv, or set UV=/path/to/uv")


def compile_args(output: Path | None, upgrade: bool) -> list[str]:
    """uv pip compile reading its input from stdin, writing ``output`` (stdout when None)."""
    args = [
        uv(),
        "pip",
        "compile",
        "-",
        "--python-version",
        PYTHON_VERSION,
        "--python-platform",
        PLATFORM,
        "--custom-compile-command",
        COMMAND,
        "--quiet",
    ]
    if output is not None:
        args += ["--output-file", str(output)]
    for name in sorted(local_names()):
        args += ["--no-emit-package", name]
    return args + (["--upgrade"] if upgrade else [])


def lock(upgrade: bool) -> None:
    """Resolve everything declared into requirements.lock, keeping its pins unless ``upgrade``."""
    libs = dict(projects())[ROOT / "libs"]
    extras = ",".join(sorted(libs.get("optional-dependencies", {})))  # type: ignore[arg-type]
    # Editable local projects, so uv reads their pyprojects (and sees scalerec-libs as local, not on PyPI).
    inputs = [f"-e ./libs[{extras}]"]
    inputs += [f"-e ./{p.relative_to(ROOT).as_posix()}" for p in PROJECTS if p.name != "libs"]
    inputs += [f"-r {DEV.name}"]
    text = LOCK.read_text() if LOCK.exists() else ""
    main, _, _ = text.partition(NODEPS_HEADER)
    # The main resolution's own output file: its pins are uv's preferences, so relocking moves nothing else.
    staged = LOCK.with_suffix(".lock.tmp")
    staged.write_text(main)
    try:
        subprocess.run(compile_args(staged, upgrade), input="\n".join(inputs) + "\n", text=True, cwd=ROOT, check=True)
        resolved = staged.read_text()
        # The --no-deps packages pinned on their own (their dependencies would conflict: nvidia-pytriton's
        # pin numpy<2), keeping the lock's version while it still satisfies the requirement.
        previous = pins(text)
        nodeps_inputs = []
        for req in map(Requirement, requirement_lines(NODEPS)):
            keep = previous.get(canonical(req.name))
            pinned = not upgrade and keep is not None and req.specifier.contains(keep, prereleases=True)
            nodeps_inputs.append(f"{req.name}=={keep}" if pinned else str(req))
        nodeps = ""
        if nodeps_inputs:
            proc = subprocess.run(
                [*compile_args(None, upgrade), "--no-deps", "--no-header"],
                input="\n".join(nodeps_inputs) + "\n",
                text=True,
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            nodeps = f"{NODEPS_HEADER}\n{proc.stdout}"
    finally:
        staged.unlink(missing_ok=True)
    body = "\n".join(line for line in resolved.rstrip("\n").splitlines() if line != TARGET)
    LOCK.write_text(f"{TARGET}\n{body}\n" + (f"\n{nodeps}" if nodeps else ""))
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(pins(LOCK.read_text()))} packages")


def check() -> list[str]:
    """What the lock lacks: each declared requirement with no pin, or a pin its specifier excludes."""
    if not LOCK.exists():
        return [f"{LOCK.name} is missing"]
    text = LOCK.read_text()
    pinned = pins(text)
    problems = []
    if TARGET not in text.splitlines():
        problems.append(f"{LOCK.name} was not resolved for Python {PYTHON_VERSION} on {PLATFORM}")
    for req, where in sorted(declared().items()):
        r = Requirement(req)
        if r.marker is not None and not r.marker.evaluate({"python_version": PYTHON_VERSION, "extra": ""}):
            continue
        version = pinned.get(canonical(r.name))
        if version is None:
            problems.append(f"{req} ({', '.join(where)}) is not in {LOCK.name}")
        elif not r.specifier.contains(version, prereleases=True):
            problems.append(f"{req} ({', '.join(where)}) is locked at {version}")
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if a declared dependency is not locked")
    parser.add_argument("--upgrade", action="store_true", help="newest allowed versions, not the current pins")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"{LOCK.name} is stale: run `{COMMAND}` and commit {LOCK.name}", file=sys.stderr)
            return 1
        print(f"{LOCK.name} covers every declared dependency")
        return 0
    lock(args.upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
