"""SHA-256 of every file of a model version: recorded in its card when written, checked before serving it.

A model version is read from a shared volume by processes that did not write it.  A file changed
after the trainer wrote it (a bad copy, a disk fault, someone swapping ``model.onnx`` or the
embedding table) must not be served: the ranker checks every file against the card before it
activates a version, and refuses the version otherwise (the previous one, or the baseline, keeps
serving).  The card itself is not covered — it holds the digests; protecting it is the volume's
permissions' job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

# The card's key: {relative file path: hex SHA-256}.
DIGESTS_KEY = "sha256"
_CHUNK = 1 << 20


class IntegrityError(RuntimeError):
    """A version's files do not match the digests in its card (or the card has none)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(folder: Path, exclude: Collection[str] = ()) -> dict[str, str]:
    """Every regular file under ``folder`` (relative POSIX path → SHA-256), but those named in ``exclude``."""
    folder = Path(folder)
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink() and path.relative_to(folder).as_posix() not in exclude
    }


def verify_files(folder: Path, card: Mapping[str, Any], exclude: Collection[str] = ()) -> None:
    """Raise :class:`IntegrityError` naming the first files that differ from ``card``'s digests.

    Files that are missing, changed, or present but not in the card all count: a version is
    exactly what the trainer wrote.  A card without digests is refused too (closed by default).
    """
    folder = Path(folder)
    expected = card.get(DIGESTS_KEY)
    if not isinstance(expected, dict) or not expected:
        raise IntegrityError(f"{folder}: the model card has no {DIGESTS_KEY} digests; the version cannot be verified")
    symlinks = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_symlink()]
    actual = file_digests(folder, exclude)
    problems = [f"{name} is missing" for name in sorted(set(expected) - set(actual))]
    problems += [
        f"{name} does not match its sha256"
        for name in sorted(set(expected) & set(actual))
        if expected[name] != actual[name]
    ]
    problems += [f"{name} is not in the card" for name in sorted(set(actual) - set(expected))]
    problems += [f"{name} is a symbolic link" for name in sorted(symlinks)]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise IntegrityError(f"{folder}: {'; '.join(problems[:3])}{more}")
