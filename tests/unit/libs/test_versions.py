"""Model version allocation across the two models of a run, crash clean-up and retention."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from scalerec_models import repository as repo
from scalerec_models.versions import EXPORT_PREFIX, allocate_version, clean_incomplete, export_scratch, prune_versions

from tests.unit.libs.test_repository import _scorer_onnx

MODELS = ("tower", "ranked")  # the second one completes a version, like the ranker after the user tower


def _write_run(repository: Path, onnx_file: Path) -> int:
    with allocate_version(repository, MODELS) as a:
        for model in MODELS:
            repo.write_model_version(repository, model, onnx_file, card={}, version=a.version)
        return a.version


def test_a_writer_killed_mid_version_does_not_wedge_the_next_run(tmp_path: Path) -> None:
    repository, onnx_file = tmp_path / "r", _scorer_onnx(tmp_path / "m.onnx")
    assert _write_run(repository, onnx_file) == 1
    # A writer that dies (SIGKILL) after the first model of version 2 and while staging the second.
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from scalerec_models import repository as repo
        from scalerec_models.versions import allocate_version
        r = Path({str(repository)!r})
        with allocate_version(r, {MODELS!r}) as a:
            repo.write_model_version(r, {MODELS[0]!r}, Path({str(onnx_file)!r}), card={{}}, version=a.version)
            (r / {MODELS[1]!r} / f".staging-{{a.version}}-dead").mkdir(parents=True)
            print(a.version, flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "2"
    # While it holds the lock nobody else allocates.
    with pytest.raises(TimeoutError), allocate_version(repository, MODELS, timeout_s=0.5):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert repo.list_versions(repository, MODELS[0]) == [1, 2] and repo.list_versions(repository, MODELS[1]) == [1]
    # Restarted: the half version is cleaned up and the run writes the next number.
    started = time.monotonic()
    assert _write_run(repository, onnx_file) == 3
    assert time.monotonic() - started < 30
    assert repo.list_versions(repository, MODELS[0]) == repo.list_versions(repository, MODELS[1]) == [1, 3]
    assert 2 not in repo.read_served_versions(repository, MODELS[0])
    assert not [p for m in MODELS for p in (repository / m).iterdir() if p.name.startswith(".")]
    assert repo.validate_repository(repository) == []


def test_an_export_is_written_on_the_repositorys_volume_and_a_dead_runs_is_cleaned_up(tmp_path: Path) -> None:
    """The trainer exported into /tmp, a 256 Mi emptyDir in the chart, where a large model (tens of GB) got its
    pod evicted. Its scratch is now a hidden folder of the repository; a killed run's is removed by the next
    writer, a live run's is not."""
    repository, onnx_file = tmp_path / "r", _scorer_onnx(tmp_path / "m.onnx")
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from scalerec_models.versions import export_scratch
        with export_scratch(Path({str(repository)!r})) as folder:
            (folder / "model.onnx").write_bytes(b"x" * 1000)
            print(folder, flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stdout is not None
    live = Path(proc.stdout.readline().strip())
    assert live.parent == repository and live.name.startswith(EXPORT_PREFIX)
    assert repo.validate_repository(repository) == [] and repo.list_versions(repository, MODELS[1]) == []
    assert _write_run(repository, onnx_file) == 1
    assert (live / "model.onnx").is_file()  # a live run's export is left alone by the next writer
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    with export_scratch(repository) as mine:
        assert _write_run(repository, onnx_file) == 2  # cleans up the dead one, not the one in use
        assert not live.exists() and mine.is_dir()
    assert not mine.exists()
    assert [p.name for p in repository.iterdir() if p.name.startswith(EXPORT_PREFIX)] == []


def test_version_numbers_are_never_handed_out_twice(tmp_path: Path) -> None:
    repository = tmp_path / "r"
    with allocate_version(repository, MODELS) as a:
        first = a.version
    # Nothing was written under it (the run failed): the number is still spent.
    with allocate_version(repository, MODELS) as b:
        assert b.version == first + 1
    assert clean_incomplete(repository, MODELS) == []


def test_pruning_keeps_the_champion_newer_versions_and_the_newest_n(tmp_path: Path) -> None:
    repository, onnx_file = tmp_path / "r", _scorer_onnx(tmp_path / "m.onnx")
    for _ in range(8):
        _write_run(repository, onnx_file)
    assert prune_versions(repository, 2, models=MODELS) == []  # no champion yet: nothing goes
    for model in MODELS:
        repo.write_champion(repository, model, 6)
        repo.set_served_versions(repository, model, [6, 8])
    assert prune_versions(repository, 2, protected=[4], models=MODELS) == [1, 2, 3]
    for model in MODELS:
        assert repo.list_versions(repository, model) == [4, 5, 6, 7, 8]
    assert prune_versions(repository, 2, models=MODELS) == [4, 5]
    assert repo.list_versions(repository, MODELS[1]) == [6, 7, 8]  # 7 is newer than the champion
