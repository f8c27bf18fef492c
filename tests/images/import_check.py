"""Run inside an image (``python - START ... < import_check.py``): import everything its code reaches.

Importing every module of a service package runs only module-level imports. The backends a
service can be configured with are imported lazily (``scalerec_adapters.factory`` picks Kafka,
HBase, Memcached or Triton by URL), and so are onnxruntime, faiss and tritonclient: a missing
extra would surface at the first request, or on the first deployment with a real Kafka. So the
check follows imports statically, at any depth in a function, from the start points through
every ``scalerec_*`` module they reach, then imports each of those modules and each third-party
name they import. ``if TYPE_CHECKING:`` blocks are not followed (they never run).

Arguments: packages (every module under them is a start point) and ``.py`` files; after
``--not-reached``, modules that the start points reach only through code the service never
calls (the test says why for each). Prints what failed; exit status 1 if anything did.
Standard library only: it runs in the image's own interpreter, with the image's packages.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

OURS = "scalerec_"


def locate(name: str) -> tuple[Path, bool] | None:
    """File of module ``name`` (and whether it is a package), found without importing it."""
    top, *rest = name.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None:
        return None
    if not spec.submodule_search_locations:
        return (Path(spec.origin), False) if not rest and spec.origin else None
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    if (base / "__init__.py").is_file():
        return base / "__init__.py", True
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py"), False
    return None


def _type_checking_only(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                skipped.update(id(n) for n in ast.walk(stmt))
    return skipped


def imports_of(path: Path, module: str, is_package: bool) -> list[tuple[str, str | None]]:
    """(module, name) for every import statement in ``path``: name is None for ``import module``."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_only(tree)
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            found.extend((source, alias.name) for alias in node.names if alias.name != "*")
    return found


def start_points(args: list[str]) -> list[tuple[str, Path, bool]]:
    points: list[tuple[str, Path, bool]] = []
    for arg in args:
        if arg.endswith(".py"):
            points.append((arg, Path(arg), False))  # a script: its path is its name
            continue
        package = importlib.import_module(arg)
        points.append((arg, Path(package.__file__ or ""), True))
        for info in pkgutil.walk_packages(package.__path__, f"{arg}."):
            where = locate(info.name)
            if where is not None:
                points.append((info.name, *where))
    return points


def main(argv: list[str]) -> int:
    args, not_reached = argv, set()
    if "--not-reached" in argv:
        i = argv.index("--not-reached")
        args, not_reached = argv[:i], set(argv[i + 1 :])
    todo = start_points(args)
    ours: dict[str, Path] = {}
    theirs: dict[tuple[str, str | None], str] = {}  # (module, name) -> the module of ours importing it
    while todo:
        module, path, is_package = todo.pop()
        if module in ours:
            continue
        ours[module] = path
        for source, name in imports_of(path, module, is_package):
            top = source.split(".")[0]
            if top.startswith(OURS):
                for candidate in (source, f"{source}.{name}" if name else None):
                    where = locate(candidate) if candidate and candidate not in not_reached else None
                    if where is not None and candidate not in ours:
                        todo.append((candidate, *where))
            elif top not in sys.stdlib_module_names:
                theirs.setdefault((source, name), module)

    failures: list[str] = []
    for module, path in sorted(ours.items()):
        try:
            if module.endswith(".py"):
                spec = importlib.util.spec_from_file_location(path.stem, path)
                assert spec is not None and spec.loader is not None
                sys.modules[spec.name] = loaded = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(loaded)
            else:
                importlib.import_module(module)
        except BaseException as exc:
            failures.append(f"{module}: {type(exc).__name__}: {exc}")
    missing: set[str] = set()  # one line per missing module, not one per name imported from it
    for (source, name), importer in sorted(theirs.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if source in missing:
            continue
        try:
            imported = importlib.import_module(source)
            if name is not None and not hasattr(imported, name):
                importlib.import_module(f"{source}.{name}")
        except BaseException as exc:
            missing.add(source)
            what = f"{source}{'.' + name if name else ''}"
            failures.append(f"{what} (imported by {importer}): {type(exc).__name__}: {exc}")
    print(f"imported {len(ours)} modules of ours and {len(theirs)} third-party names")
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
