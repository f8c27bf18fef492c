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
