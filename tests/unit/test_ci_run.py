"""`.ci/run` decides whether `make test-deploy` fits its budget: by default it runs when there is room,
and says why when there is not. `make`, `podman` and `df` are replaced by recorders on PATH: what is tested
is the script's decision, not the targets (tests/deploy runs those), whatever the disk of the machine
running the tests has free."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def ci_run(tmp_path: Path, trainer_image: str, free_gb: int = 100, **env: str) -> tuple[list[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    calls = tmp_path / "make.calls"
    (bin_dir / "make").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    # `podman image inspect` answers when the trainer image was built: now (after the last commit), or
    # never (no such image), or long ago (before the commits that changed what it installs).
    created = {"fresh": "9999999999", "missing": "", "stale": "1"}[trainer_image]
    (bin_dir / "podman").write_text(f"#!/bin/sh\n[ -n '{created}' ] && echo {created} || exit 1\n")
    # `df -BG --output=avail DIR`: the free space .ci/run compares with what building the images needs.
    (bin_dir / "df").write_text(f"#!/bin/sh\necho ' Avail'\necho ' {free_gb}G'\n")
    for tool in ("make", "podman", "df"):
        (bin_dir / tool).chmod(0o755)
    proc = subprocess.run(
        ["bash", str(REPO / ".ci" / "run")],
        env={
            # The run's own choices, not the ones of whoever runs the tests (.ci/run itself may be the caller).
            **{k: v for k, v in os.environ.items() if k not in ("SCALEREC_CI_DEPLOY", "SCALEREC_CI_BUDGET_MIN")},
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "SCALEREC_CACHE": str(tmp_path / "cache"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return calls.read_text().split("\n")[:-1], proc.stderr


@pytest.mark.parametrize("trainer_image", ["fresh", "missing", "stale"])
def test_make_test_deploy_runs_by_default_when_the_budget_has_room(tmp_path: Path, trainer_image: str) -> None:
    calls, _ = ci_run(tmp_path, trainer_image)
    assert calls == ["lint", "test", "test-deploy"]


def test_without_room_it_is_not_run_and_the_reason_is_printed(tmp_path: Path) -> None:
    # 20 minutes cannot hold building the trainer image and the deploy tests (~30 min), nor
    # rebuilding an image older than the last commit that changed what it installs.
    for image in ("missing", "stale"):
        calls, err = ci_run(tmp_path / image, trainer_image=image, SCALEREC_CI_BUDGET_MIN="20")
        assert calls == ["lint", "test"], image
        assert "make test-deploy NOT run" in err and "needs ~30 min more" in err and "budget is 20 min" in err
    # With an up-to-date image it needs only the tests, and 20 minutes are enough.
    calls, _ = ci_run(tmp_path / "fresh", trainer_image="fresh", SCALEREC_CI_BUDGET_MIN="20")
    assert calls == ["lint", "test", "test-deploy"]


def test_it_can_be_left_out_on_purpose(tmp_path: Path) -> None:
    calls, err = ci_run(tmp_path, trainer_image="fresh", SCALEREC_CI_DEPLOY="0")
    assert calls == ["lint", "test"] and "SCALEREC_CI_DEPLOY=0" in err


def test_without_disk_for_the_images_it_is_not_run_and_the_reason_is_printed(tmp_path: Path) -> None:
    calls, err = ci_run(tmp_path / "missing", trainer_image="missing", free_gb=12)
    assert calls == ["lint", "test"]
    assert "make test-deploy NOT run: 12 GB free" in err and "needs ~20 GB" in err
    # An up-to-date trainer image leaves only the small images to build: 12 GB are enough.
    calls, _ = ci_run(tmp_path / "fresh", trainer_image="fresh", free_gb=12)
    assert calls == ["lint", "test", "test-deploy"]
