"""The house's layering, read from the code: libs at the bottom, services and the CLI above, nothing imports them.

docs/architecture.md says "nothing imports a service"; this keeps it true, and keeps the small libraries that
images without ML extras install (the Locust image installs ``libs/`` alone for ``scalerec_synthetic``) from
growing a dependency on the model code. A static AST walk: nothing is imported, ``if TYPE_CHECKING:`` included
(a type-only import still couples the packages).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBS = sorted(p.parent.name for p in (ROOT / "libs").glob("scalerec_*/__init__.py"))
ABOVE_LIBS = {"scalerec_cli", *(f"scalerec_{p.name}" for p in (ROOT / "services").iterdir() if p.is_dir())}
# What each small library may import of ours. The synthetic shop is data for tests, load tests and the demo:
# event models and the feature vocabulary (the device type), nothing that pulls torch, onnx or a backend.
ALLOWED = {"scalerec_synthetic": {"scalerec_events", "scalerec_features", "scalerec_synthetic"}}


def first_party_imports(package: str) -> dict[str, str]:
    """Top-level ``scalerec_*`` package -> the first place it is imported from, for one libs package."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "libs" / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top.startswith("scalerec_"):
                    found.setdefault(top, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_the_walk_finds_the_libraries_and_what_they_import() -> None:
    assert {"scalerec_core", "scalerec_events", "scalerec_synthetic"} <= set(LIBS)
    assert "scalerec_collector" in ABOVE_LIBS and "scalerec_cli" in ABOVE_LIBS
    assert "scalerec_events" in first_party_imports("scalerec_synthetic")


@pytest.mark.parametrize("package", LIBS)
def test_libs_import_no_service_and_no_cli(package: str) -> None:
    wrong = {name: where for name, where in first_party_imports(package).items() if name in ABOVE_LIBS}
    assert not wrong, f"{package} imports what sits above libs/: {wrong}"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_small_libraries_import_only_what_they_are_allowed(package: str) -> None:
    wrong = {name: where for name, where in first_party_imports(package).items() if name not in ALLOWED[package]}
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])} of ours: {wrong}"
