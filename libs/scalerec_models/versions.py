"""Allocating, finishing and pruning model versions across the models one training run writes.

A training run writes the same version number for the user tower and then the ranker (the ranker
last: its appearance is what makes the version complete).  Two things must hold whatever happens
to the writer:

* **Atomic allocation.**  The number is taken under an exclusive lock on the repository
  (``.writer.lock``, ``flock``: released by the kernel when the process dies, even on SIGKILL),
  and recorded in ``.last_version`` before anything is written, so no two writers share a number
  and a number is never handed out twice, even after a crash.
* **No wedge after a crash.**  Whoever takes the lock next first removes what a dead writer left:
  hidden staging folders, and a version of one model without its ranker version (half written).
  The next run then writes the next number instead of failing on a folder that already exists.

Retention (:func:`prune_versions`): versions older than the newest ``keep`` are deleted, but never
the champion, a version the caller protects (a running experiment's), anything at or above the
oldest of those, or a version the config still serves.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from scalerec_models import repository as repo

if TYPE_CHECKING:
    from scalerec_models.version_counter import VersionCounter

log = logging.getLogger(__name__)

LOCK_FILE = ".writer.lock"
HIGH_WATER_FILE = ".last_version"
# The models one training run writes, in writing order: the last one completes a version.
RUN_MODELS: tuple[str, ...] = (repo.USER_TOWER_MODEL, repo.RANKER_MODEL)


class VersionLockTimeout(TimeoutError):
    """Another writer held the repository for longer than the caller was willing to wait."""


@dataclass
class Allocation:
    version: int
    cleaned: list[str] = field(default_factory=list)


def _high_water(repository: Path) -> int:
    try:
        return int((repository / HIGH_WATER_FILE).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _set_high_water(repository: Path, version: int) -> None:
    tmp = repository / f"{HIGH_WATER_FILE}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{version}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, repository / HIGH_WATER_FILE)


def _unserve(repository: Path, model: str, version: int) -> None:
    served = repo.read_served_versions(repository, model)
    if version not in served:
        return
    rest = [v for v in served if v != version]
    on_disk = [v for v in repo.list_versions(repository, model) if v != version]
    if not rest and on_disk:
        rest = [on_disk[-1]]
    if rest:
        repo.set_served_versions(repository, model, rest)
    else:  # nothing else of this model exists: no config to keep
        model_dir = repository / model
        (model_dir / repo.CONFIG_FILE).unlink(missing_ok=True)
        shutil.rmtree(model_dir / "configs", ignore_errors=True)


# A run's export before it becomes a version: on the repository's volume, hidden like staging folders.
EXPORT_PREFIX = ".staging-export-"
_EXPORT_LOCK = ".held"
# An export folder whose owner never took its lock (killed between the two) is left this long.
_UNLOCKED_EXPORT_S = 3600.0


@contextlib.contextmanager
def export_scratch(repository: Path) -> Iterator[Path]:
    """A folder for one run's export, on the repository's own volume, removed when the block ends.

    A large model's export is tens of GB (its embedding tables, external-data ONNX files, state dicts):
    more than a pod's ``/tmp`` holds (the chart's is a 256 Mi emptyDir), while the repository's volume is
    sized for model versions. Hidden and named like staging folders, so Triton, :func:`repo.list_versions`
    and the object-storage sidecar's upload skip it. Its owner holds an ``flock`` on a file in it while it
    exists: :func:`clean_incomplete` removes one whose owner died (the kernel drops the lock, SIGKILL too).
    """
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=EXPORT_PREFIX, dir=repository))
    try:
        with open(folder / _EXPORT_LOCK, "a+") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _dead_export(folder: Path) -> bool:
    lock = folder / _EXPORT_LOCK
    if not lock.is_file():
        try:
            return time.time() - folder.stat().st_mtime > _UNLOCKED_EXPORT_S
        except FileNotFoundError:
            return False
    try:
        with open(lock, "a+") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when closed
            return True
    except BlockingIOError:
        return False  # a live run is exporting into it
    except FileNotFoundError:
        return False


def clean_incomplete(repository: Path, models: Sequence[str] = RUN_MODELS) -> list[str]:
    """Remove what a dead writer left (call with the writer lock held); returns what was removed."""
    removed: list[str] = []
    for child in repository.glob(f"{EXPORT_PREFIX}*"):
        if child.is_dir() and _dead_export(child):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child.name)
    complete = set(repo.list_versions(repository, models[-1]))
    for model in models:
        model_dir = repository / model
        if not model_dir.is_dir():
            continue
        for child in model_dir.iterdir():
            if child.name.startswith((".staging-", ".deleting-")):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(f"{model}/{child.name}")
        if model == models[-1]:
            continue
        for version in repo.list_versions(repository, model):
            if version in complete:
                continue
            _unserve(repository, model, version)
            doomed = model_dir / f".deleting-{version}"
            os.rename(model_dir / str(version), doomed)
            shutil.rmtree(doomed)
            removed.append(f"{model}/{version}")
    if removed:
        log.warning("model repository %s: removed what an interrupted writer left: %s", repository, removed)
    return removed


@contextlib.contextmanager
def allocate_version(
    repository: Path,
    models: Sequence[str] = RUN_MODELS,
    *,
    timeout_s: float = 600.0,
    counter: VersionCounter | None = None,
) -> Iterator[Allocation]:
    """Hold the repository's writer lock, clean up after dead writers, and hand out the next version.

    The version is one more than every version of ``models`` on disk and every number handed out
    before (``.last_version``); the lock is held until the block ends, i.e. while the caller writes.
    With a ``counter`` (a repository that is one of several copies: object storage) the number is taken
    from it, and is at least that: writers with copies of their own never share one.
    """
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    with open(repository / LOCK_FILE, "a+") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() >= deadline:
                    raise VersionLockTimeout(
                        f"{repository}: another writer held {LOCK_FILE} for {timeout_s:.0f}s"
                    ) from exc
                time.sleep(0.2)
        try:
            cleaned = clean_incomplete(repository, models)
            highest = max(
                [_high_water(repository), *(max(repo.list_versions(repository, m), default=0) for m in models)]
            )
            version = highest + 1 if counter is None else counter.reserve(highest + 1)
            _set_high_water(repository, version)
            yield Allocation(version, cleaned)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def prune_versions(
    repository: Path,
    keep: int,
    *,
    protected: Iterable[int] = (),
    models: Sequence[str] = RUN_MODELS,
) -> list[int]:
    """Delete versions older than the newest ``keep`` (of the completing model), returning them.

    Only versions below min(champion, ``protected``) go: never the champion, a running experiment's
    version, a candidate newer than the champion, or a version a config still serves (it is left for
    the next run once Triton's controller has moved off it).  Without a champion nothing is pruned.
    """
    repository = Path(repository)
    champion = repo.read_champion(repository, models[-1])
    if champion is None or keep < 1:
        return []
    floor = min({champion, *protected})
    newest = set(repo.list_versions(repository, models[-1])[-keep:])
    served = {v for m in models for v in repo.read_served_versions(repository, m)}
    doomed = [
        v for v in repo.list_versions(repository, models[-1]) if v < floor and v not in newest and v not in served
    ]
    for version in doomed:
        # The completing model last, as when writing: an interrupted prune leaves a half version that
        # clean_incomplete finishes.
        for model in models:
            if version in repo.list_versions(repository, model):
                repo.remove_version(repository, model, version)
    if doomed:
        log.info("model repository %s: pruned versions %s (keeping %d, floor %d)", repository, doomed, keep, floor)
    return doomed
