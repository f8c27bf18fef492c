"""Every service's image carries what its code imports, and the collector carries no torch.

The dev venv installs every extra, so a service that imports a package its image does not
install (the ranker and evaluator imported onnx and scipy with only ``[serving]``) passes
every other test and dies in its first minute on Kubernetes. This test reads the code
instead of running it, so it needs neither the images nor a clean venv.

What counts as imported (a static AST walk, no code is run):

* every module of the service's package ``scalerec_<name>``, all of its code;
* the ``scalerec_*`` lib modules those import, transitively, with the packages above them
  (``__init__``);
* in a lib module, imports at module level (also inside ``if``/``try``/class bodies), and
  *lazy* imports inside a function or method once that function is live: its name is
  used in the service's package, in module-level code of a reached module, or in another
  live function, and for a method its class's name is used too (a dunder method such as
  ``__init__`` needs only its class; matched by name, so a lazy import is counted when in
  doubt). This is how
  ``make_bus``'s lazy ``kafka_bus`` import counts for every service while
  ``validate_repository``'s lazy ``tritonclient`` import (tests and tools only) does not;
* not imports under ``if TYPE_CHECKING:`` (never run).

Every third-party top-level module reached must come from a distribution the service
declares: its ``services/<name>/pyproject.toml`` dependencies, ``scalerec-libs`` with the
extras the pyproject or the image build names (skaffold's EXTRAS build argument for
services/Dockerfile, and any Dockerfile.* of the service; read from ``libs/pyproject.toml`` of this
checkout), or what those require in turn (installed metadata). Modules map to
distributions with ``importlib.metadata.packages_distributions()``.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
LIBS = ROOT / "libs"
SERVICES = ("collector", "preprocessor", "trainer", "ranker", "evaluator")
LIBS_DIST = "scalerec-libs"


# --- the code: modules, their imports, live functions ------------------------------------------


@dataclass
class Scope:
    """Module-level code, or one function's body (nested functions included)."""

    imports: list[tuple[str, int]] = field(default_factory=list)  # (module, line)
    names: set[str] = field(default_factory=set)


@dataclass
class ModuleInfo:
    name: str
    path: Path
    top: Scope
    # (class or "", function name) -> its bodies (a name may be defined more than once)
    functions: dict[tuple[str, str], list[Scope]]


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """ast.walk without annotations: never evaluated here (``from __future__ import annotations``),
    so a type named only in an annotation is not a use that makes its methods live."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        for name, value in ast.iter_fields(n):
            if name in ("annotation", "returns"):
                continue
            children = value if isinstance(value, list) else [value]
            todo += [c for c in children if isinstance(c, ast.AST)]


def _record(node: ast.AST, scope: Scope, package: str) -> None:
    if isinstance(node, ast.Import):
        scope.imports += [(a.name, node.lineno) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolve against the module's package
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        if base != "__future__":
            scope.imports.append((base, node.lineno))
            scope.imports += [(f"{base}.{a.name}", node.lineno) for a in node.names]  # maybe submodules
    elif isinstance(node, ast.Name):
        scope.names.add(node.id)
    elif isinstance(node, ast.Attribute):
        scope.names.add(node.attr)


def _walk_function(fn: ast.AST, scope: Scope, package: str) -> None:
    for node in _walk(fn):
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue  # its children are still walked by ast.walk; TYPE_CHECKING imports in functions are rare
        _record(node, scope, package)


def _walk_module(body: list[ast.stmt], info: ModuleInfo, package: str, cls: str = "") -> None:
    for stmt in body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            scope = Scope()
            for deco in stmt.decorator_list:  # decorators run at import
                for node in _walk(deco):
                    _record(node, info.top, package)
            _walk_function(stmt, scope, package)
            info.functions.setdefault((cls, stmt.name), []).append(scope)
        elif isinstance(stmt, ast.ClassDef):
            for node in [*stmt.bases, *stmt.keywords, *stmt.decorator_list]:
                for sub in _walk(node):
                    _record(sub, info.top, package)
            _walk_module(stmt.body, info, package, stmt.name)
        elif isinstance(stmt, ast.If) and _is_type_checking(stmt):
            _walk_module(stmt.orelse, info, package, cls)
        elif isinstance(stmt, ast.If | ast.Try | ast.With):
            for node in ast.iter_child_nodes(stmt):
                if not isinstance(node, ast.stmt):
                    for sub in _walk(node):
                        _record(sub, info.top, package)
            _walk_module(
                [
                    s
                    for part in ("body", "orelse", "finalbody", "handlers")
                    for s in getattr(stmt, part, [])
                    if isinstance(s, ast.stmt)
                ]
                + [s for h in getattr(stmt, "handlers", []) for s in h.body],
                info,
                package,
                cls,
            )
        else:
            for node in _walk(stmt):
                _record(node, info.top, package)


def _source_roots() -> list[Path]:
    return [LIBS, *(ROOT / "services" / s / "src" for s in SERVICES)]


@cache
def find_module(name: str) -> Path | None:
    """The file of a first-party module of this checkout, or None."""
    rel = Path(*name.split("."))
    for root in _source_roots():
        for candidate in (root / rel / "__init__.py", root.joinpath(rel).with_suffix(".py")):
            if candidate.is_file():
                return candidate
    return None


@cache
def parse(name: str) -> ModuleInfo:
    path = find_module(name)
    assert path is not None, name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    info = ModuleInfo(name, path, Scope(), {})
    _walk_module(ast.parse(path.read_text(), str(path)).body, info, package)
    return info


def _first_party(name: str) -> bool:
    return name.split(".")[0].startswith("scalerec_")


def _with_parents(name: str) -> Iterator[str]:
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        yield ".".join(parts[:i])


def third_party_imports(service: str) -> dict[str, str]:
    """Top-level third-party module -> where it is first imported ("file:line"), for one service."""
    package = f"scalerec_{service}"
    own = sorted(
        ".".join(p.relative_to(ROOT / "services" / service / "src").with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "services" / service / "src" / package).rglob("*.py")
    )
    reached: set[str] = set()
    live: set[str] = set()
    done_functions: set[tuple[str, tuple[str, str], int]] = set()
    found: dict[str, str] = {}
    scopes: list[tuple[ModuleInfo, Scope]] = []

    def reach(name: str) -> None:
        for mod in _with_parents(name):
            if mod in reached or find_module(mod) is None:
                continue
            reached.add(mod)
            info = parse(mod)
            scopes.append((info, info.top))
            if mod.split(".")[0] == package:  # the service's own code is all live
                for name_, defs in info.functions.items():
                    for i, s in enumerate(defs):
                        done_functions.add((mod, name_, i))
                        scopes.append((info, s))

    for mod in own:
        reach(mod)
    while scopes:
        while scopes:
            info, scope = scopes.pop()
            live |= scope.names
            for imported, line in scope.imports:
                if _first_party(imported):
                    reach(imported)
                else:
                    top = imported.split(".")[0]
                    if top and top not in sys.stdlib_module_names:
                        found.setdefault(top, f"{info.path.relative_to(ROOT)}:{line}")
        for mod in sorted(reached):
            info = parse(mod)
            for name_, defs in info.functions.items():
                cls, fn = name_
                dunder = fn.startswith("__") and fn.endswith("__")  # __init__, __call__: run through the class
                if (cls and cls not in live) or (fn not in live and not (cls and dunder)):
                    continue
                for i, s in enumerate(defs):
                    if (mod, name_, i) not in done_functions:
                        done_functions.add((mod, name_, i))
                        scopes.append((info, s))
    return found


# --- the declarations: pyproject, Dockerfile, installed metadata --------------------------------


def _pyproject(path: Path) -> dict[str, object]:
    return tomllib.loads(path.read_text())["project"]  # type: ignore[no-any-return]


def libs_extras(requirements: list[str]) -> set[str]:
    return {e for r in map(Requirement, requirements) if canonicalize_name(r.name) == LIBS_DIST for e in r.extras}


DOCKER_LIBS = re.compile(r'"(?:\./libs|scalerec-libs)\[([^\]]*)\]"')


def dockerfile_extras(path: Path) -> list[set[str]]:
    """The libs extras of every `pip wheel`/`pip install` of scalerec-libs in a Dockerfile."""
    return [set(m.split(",")) for m in DOCKER_LIBS.findall(path.read_text())]


def image_extras(service: str) -> list[set[str]]:
    """The libs extras each image of a service installs: the EXTRAS build argument skaffold.yaml gives
    services/Dockerfile for it, and those any Dockerfile.* variant of its own names."""
    import yaml

    docs = [d for d in yaml.safe_load_all((ROOT / "skaffold.yaml").read_text()) if d]
    found = [
        set(str(a["docker"]["buildArgs"]["EXTRAS"]).split(","))
        for d in docs
        for a in d.get("build", {}).get("artifacts", [])
        if a["image"] == f"scalerec/{service}"
    ]
    for variant in sorted((ROOT / "services" / service).glob("Dockerfile.*")):
        wheel, install = dockerfile_extras(variant)
        assert wheel == install, f"{variant.name}: wheels built {wheel}, installed {install}"
        found.append(wheel)
    return found


def _requires(dist: str, extras: frozenset[str]) -> list[Requirement]:
    try:
        reqs = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return []  # not installed here: its own dependencies cannot be followed
    out = []
    for r in map(Requirement, reqs):
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in (extras or {""})):
            out.append(r)
    return out


def declared_distributions(service: str) -> set[str]:
    """Distributions a service's image gets: its requirements, libs' with the extras named, and theirs."""
    project = _pyproject(ROOT / "services" / service / "pyproject.toml")
    requirements = [str(r) for r in project["dependencies"]]  # type: ignore[attr-defined]
    extras = libs_extras(requirements)
    # The smallest image of the service is what must carry it all.
    variants = image_extras(service)
    extras |= set.intersection(*variants) if variants else set()
    libs = _pyproject(LIBS / "pyproject.toml")
    optional: dict[str, list[str]] = libs["optional-dependencies"]  # type: ignore[assignment]
    todo = [Requirement(r) for r in requirements if canonicalize_name(Requirement(r).name) != LIBS_DIST]
    todo += [Requirement(r) for r in libs["dependencies"]]  # type: ignore[attr-defined]
    todo += [Requirement(r) for e in sorted(extras) for r in optional[e]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        todo += _requires(name, frozenset(req.extras))
    return {k.split("[")[0] for k in seen}


@cache
def module_distributions() -> dict[str, list[str]]:
    return {m: [canonicalize_name(d) for d in ds] for m, ds in metadata.packages_distributions().items()}


# --- the checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_every_third_party_import_is_a_declared_dependency(service: str) -> None:
    declared = declared_distributions(service)
    missing = []
    for module, where in sorted(third_party_imports(service).items()):
        dists = module_distributions().get(module)
        assert dists, f"{module} (imported at {where}) is not installed here: cannot tell its distribution"
        if not set(dists) & declared:
            missing.append(f"{module} ({'/'.join(dists)}) imported at {where}")
    assert not missing, f"{service} imports what its pyproject.toml and Dockerfile do not install:\n  " + "\n  ".join(
        missing
    )


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfiles_install_the_libs_extras_the_pyproject_names(service: str) -> None:
    project = _pyproject(ROOT / "services" / service / "pyproject.toml")
    wanted = libs_extras([str(r) for r in project["dependencies"]])  # type: ignore[attr-defined]
    variants = image_extras(service)
    assert variants, f"no image of {service} in skaffold.yaml"
    for found in variants:
        assert wanted <= found, f"an image of {service} installs libs[{','.join(sorted(found))}], needs {wanted}"


def test_the_collector_carries_no_torch() -> None:
    assert "torch" not in declared_distributions("collector")
    assert "torch" not in third_party_imports("collector")


def test_the_walk_sees_lazy_imports_on_the_path_and_skips_unused_ones() -> None:
    """Guards the rule itself: if these stop holding, the test above checks less than it says."""
    ranker = third_party_imports("ranker")
    assert {"aiokafka", "onnxruntime", "tritonclient", "onnx", "faiss"} <= set(ranker), ranker
    assert "scipy" in third_party_imports("evaluator")  # item-item CF baseline in the offline gate
    collector = third_party_imports("collector")
    assert "aiokafka" in collector and "limits" in collector  # lazy, behind BUS_URL and the rate limiter
    assert not {"onnxruntime", "tritonclient", "faiss"} & set(collector), collector  # make_scorer is not called
