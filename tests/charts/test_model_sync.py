"""The model repository's object-storage sidecar, run: the chart's own script with the real rclone (Debian's,
installed by ``make tools``), against a local folder as the remote (rclone's local backend).

A fresh bucket or prefix has nothing in it, and rclone reports a missing source as an error (exit 3,
"directory not found"): the sidecar must take that as an empty repository, or its first sync never
succeeds, its marker is never written, and no pod's main container ever starts on a fresh install — not
even the trainer's, which would write the first version.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from scalerec_models import repository as repo
from scalerec_models.versions import RUN_MODELS, prune_versions

from tests.charts.helm import RELEASE, render


def _sync_script(component: str, models: Path, marker: Path) -> str:
    r = render(
        [
            "--set",
            "modelRepository.type=objectStorage",
            "--set",
            "modelRepository.objectStorage.remote=unused",
            "--set",
            f"modelRepository.mountPath={models}",
            "--set",
            "modelRepository.objectStorage.intervalSeconds=5",  # the least the schema allows
            "--set",
            "apiKeys.keys={k1}",
        ]
    )
    deployment = r.get("Deployment", f"{RELEASE}-{component}")
    (sidecar,) = [c for c in deployment["spec"]["template"]["spec"]["initContainers"] if c["name"] == "model-sync"]
    assert sidecar["restartPolicy"] == "Always"
    (script,) = sidecar["args"]
    assert "/tmp/synced" in script
    return str(script.replace("/tmp/synced", str(marker)))  # the startup probe's marker, here in the test's folder


@contextmanager
def _running(script: str, remote: Path, tmp: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        ["/bin/sh", "-c", script],
        env={**os.environ, "REMOTE": str(remote), "HOME": str(tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@pytest.fixture(autouse=True)
def _rclone() -> None:
    assert shutil.which("rclone"), "rclone is installed by `make tools` (Debian's package)"


def test_the_trainers_sidecar_starts_on_an_empty_remote_uploads_and_flushes_on_sigterm(tmp_path: Path) -> None:
    models, remote, marker = tmp_path / "models", tmp_path / "bucket" / "model_repository", tmp_path / "synced"
    models.mkdir()
    (models / "scalerec_ranker" / "1").mkdir(parents=True)
    (models / "scalerec_ranker" / "1" / "card.json").write_text("{}")
    with _running(_sync_script("trainer", models, marker), remote, tmp_path) as proc:
        _wait_for(marker, proc)  # the remote does not exist yet: an empty repository, synced
        _wait_for(remote / "scalerec_ranker" / "1" / "card.json", proc)  # and what the trainer wrote went up
        (models / "scalerec_ranker" / "2").mkdir()
        (models / "scalerec_ranker" / "2" / "card.json").write_text("{}")  # written just before the pod stops
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert (remote / "scalerec_ranker" / "2" / "card.json").exists()


def test_a_readers_sidecar_starts_on_an_empty_remote_and_mirrors_what_comes(tmp_path: Path) -> None:
    models, remote, marker = tmp_path / "models", tmp_path / "bucket" / "model_repository", tmp_path / "synced"
    models.mkdir()
    with _running(_sync_script("ranker", models, marker), remote, tmp_path) as proc:
        _wait_for(marker, proc)  # nothing to serve yet: the ranker starts and answers from its baseline
        (remote / "scalerec_ranker" / "1").mkdir(parents=True)
        (remote / "scalerec_ranker" / "1" / "card.json").write_text("{}")
        _wait_for(models / "scalerec_ranker" / "1" / "card.json", proc)


def _next_sync(marker: Path, proc: subprocess.Popen[str]) -> None:
    """Wait until the sidecar has finished one more whole sync (it touches the marker after each)."""
    marker.unlink(missing_ok=True)
    _wait_for(marker, proc)
    marker.unlink()
    _wait_for(marker, proc)  # the one that began after the unlink above, not one already half done


def _versions(root: Path) -> dict[str, list[int]]:
    return {model: repo.list_versions(root, model) for model in RUN_MODELS}


def _bucket(tmp_path: Path, versions: tuple[int, ...], champion: int) -> tuple[Path, Path]:
    """(seed, remote): both models' ``versions`` as folders with a card, the champion, copied to a bucket."""
    seed, remote = tmp_path / "seed", tmp_path / "bucket" / "model_repository"
    for version in versions:
        for model in RUN_MODELS:
            folder = seed / model / str(version)
            folder.mkdir(parents=True)
            (folder / "card.json").write_text(f'{{"version": {version}}}')
    repo.write_champion(seed, repo.RANKER_MODEL, champion)
    shutil.copytree(seed, remote)
    return seed, remote


def _serve(root: Path, versions: list[int], mtime: float) -> None:
    """A config.pbtxt per model with ``versions`` in its version policy (what ``set_served_versions`` writes)."""
    for model in RUN_MODELS:
        config = root / model / "config.pbtxt"
        lines = "".join(f"    versions: {v}\n" for v in versions)
        config.write_text(f'name: "{model}"\nversion_policy {{\n  specific {{\n{lines}  }}\n}}\n')
        os.utime(config, (mtime, mtime))


def test_a_pruned_version_leaves_the_bucket_the_writers_copies_and_the_readers(tmp_path: Path) -> None:
    """Writers only copy (newer file wins), so a version the trainer pruned stayed in the bucket for ever, came
    back into the writers at their next pull and was mirrored into every ranker and Triton pod: each pod's
    emptyDir held every version ever trained. The trainer's retention now leaves a marker that every writer's
    sidecar acts on — here the trainer's, then the evaluator's, which still had the pruned versions and would
    otherwise upload them again — and readers' mirrors follow the bucket."""
    seed, remote = _bucket(tmp_path, (1, 2, 3), champion=3)
    trainer, evaluator, ranker = (tmp_path / name for name in ("trainer", "evaluator", "ranker"))
    shutil.copytree(seed, evaluator)  # synced before the trainer ran
    ranker.mkdir()
    # A marker whose name came from a tampered bucket names no version: nothing is deleted for it (a sidecar
    # that took ".." for one would delete its whole copy, which the evaluator's check below would see).
    (remote / repo.RANKER_MODEL / ".pruned-..").write_text("0\n")
    everything = {model: [1, 2, 3] for model in RUN_MODELS}
    with _running(_sync_script("ranker", ranker, tmp_path / "ranker.synced"), remote, tmp_path) as reader:
        _wait_for(tmp_path / "ranker.synced", reader)
        assert _versions(ranker) == everything
        # The trainer's pod: it pulls the repository, writes a version (not here), and prunes to KEEP_VERSIONS.
        trainer.mkdir()
        with _running(_sync_script("trainer", trainer, tmp_path / "trainer.synced"), remote, tmp_path) as proc:
            _wait_for(tmp_path / "trainer.synced", proc)
            assert prune_versions(trainer, 1) == [1, 2]
            assert repo.pruned_marker(trainer, repo.RANKER_MODEL, 1).exists()
            _next_sync(tmp_path / "trainer.synced", proc)
            assert _versions(remote) == {model: [3] for model in RUN_MODELS}
            assert _versions(trainer) == {model: [3] for model in RUN_MODELS}  # not pulled back in
        # The evaluator's pod had versions 1 and 2: its next sync deletes them rather than uploading them again.
        with _running(_sync_script("evaluator", evaluator, tmp_path / "evaluator.synced"), remote, tmp_path) as proc:
            _wait_for(tmp_path / "evaluator.synced", proc)
            assert _versions(evaluator) == {model: [3] for model in RUN_MODELS}
        assert _versions(remote) == {model: [3] for model in RUN_MODELS}
        assert repo.read_champion(remote, repo.RANKER_MODEL) == 3
        _next_sync(tmp_path / "ranker.synced", reader)
        assert _versions(ranker) == {model: [3] for model in RUN_MODELS}


def test_a_version_served_again_is_not_deleted_for_a_stale_copys_marker(tmp_path: Path) -> None:
    """The trainer prunes on its copy, up to a sync interval old: meanwhile the evaluator may serve an old
    version again (an experiment's). What the pull says is served wins over the marker."""
    seed, remote = _bucket(tmp_path, (1, 2, 3), champion=3)
    now = time.time()
    _serve(remote, [1, 3], now)  # the evaluator's latest: an experiment on v1 against the champion
    trainer = tmp_path / "trainer"
    shutil.copytree(seed, trainer)
    _serve(trainer, [3], now - 120)  # the trainer's copy, pulled before the experiment started
    assert prune_versions(trainer, 1) == [1, 2]
    with _running(_sync_script("trainer", trainer, tmp_path / "synced"), remote, tmp_path) as proc:
        _wait_for(tmp_path / "synced", proc)
        _next_sync(tmp_path / "synced", proc)
    assert _versions(remote) == {model: [1, 3] for model in RUN_MODELS}
    assert _versions(trainer) == {model: [1, 3] for model in RUN_MODELS}  # pulled back, kept
    assert repo.read_served_versions(trainer, repo.RANKER_MODEL) == [1, 3]


def test_a_bucket_that_refuses_deletes_still_gets_the_uploads(tmp_path: Path) -> None:
    """Credentials that may write but not delete: the purge fails, is said, and the new version still goes up."""
    seed, remote = _bucket(tmp_path, (1, 2), champion=2)
    trainer = tmp_path / "trainer"
    shutil.copytree(seed, trainer)
    assert prune_versions(trainer, 1) == [1]
    for model in RUN_MODELS:
        (trainer / model / "3").mkdir()
        (trainer / model / "3" / "card.json").write_text('{"version": 3}')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = shutil.which("rclone")
    (bin_dir / "rclone").write_text(
        f'#!/bin/sh\nif [ "$1" = purge ]; then echo "AccessDenied: purge" >&2; exit 1; fi\nexec {real} "$@"\n'
    )
    (bin_dir / "rclone").chmod(0o755)
    script = f'PATH="{bin_dir}:$PATH"\n' + _sync_script("trainer", trainer, tmp_path / "synced")
    with _running(script, remote, tmp_path) as proc:
        _wait_for(tmp_path / "synced", proc)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log = proc.communicate()[0]
    assert _versions(remote) == {model: [1, 2, 3] for model in RUN_MODELS}  # 3 uploaded; 1 could not go
    assert "could not delete scalerec_user_tower/1" in log and "could not delete scalerec_ranker/1" in log
