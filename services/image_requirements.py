"""The third-party requirements of one service image, for services/Dockerfile's dependency layer.

    python image_requirements.py libs/pyproject.toml EXTRAS services/<name>/pyproject.toml

Prints, one per line, what ``pip install "./libs[EXTRAS]" ./services/<name>`` would ask pip for
besides our own packages: scalerec-libs' dependencies and those of the extras named (the
comma-separated EXTRAS and any the service asks for, as in ``scalerec-libs[ml,triton]``), then the
service's other dependencies. The Dockerfile installs these (with requirements.lock as constraints)
before it copies any of our code, so that a change to libs/ or a service reuses that layer instead of
reinstalling every wheel (the trainer's torch and CUDA wheels take minutes); ``pip check`` after our
packages are installed with ``--no-deps`` proves nothing was missed.

Standard library only: it runs in the bare base image before anything is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def _name(requirement: str) -> tuple[str, set[str]]:
    """The normalised distribution name of a requirement and the extras it asks for."""
    match = _REQUIREMENT.match(requirement)
    if match is None:
        raise SystemExit(f"image_requirements: cannot read the requirement {requirement!r}")
    extras = {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}
    return re.sub(r"[-_.]+", "-", match.group(1)).lower(), extras


def requirements(libs: dict, extras: set[str], services: list[dict]) -> list[str]:
    extras = set(extras)  # the caller's set stays as it was
    own = _name(libs["project"]["name"])[0]
    project = libs["project"]
    optional = project.get("optional-dependencies", {})
    wanted: list[str] = []
    for service in services:
        for requirement in service["project"].get("dependencies", []):
            name, asked = _name(requirement)
            if name == own:
                extras |= asked
            elif not name.startswith("scalerec-"):
                wanted.append(requirement)
    unknown = sorted(extras - set(optional))
    if unknown:
        raise SystemExit(f"image_requirements: {own} has no extra {', '.join(unknown)} (it has {sorted(optional)})")
    out = list(project.get("dependencies", []))
    for extra in sorted(extras):
        out.extend(optional[extra])
    out.extend(wanted)
    return list(dict.fromkeys(r.strip() for r in out))  # once each, in order


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    libs = tomllib.loads(Path(argv[0]).read_text())
    extras = {e.strip() for e in argv[1].split(",") if e.strip()}
    services = [tomllib.loads(Path(p).read_text()) for p in argv[2:]]
    print("\n".join(requirements(libs, extras, services)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
