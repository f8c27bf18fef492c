"""torch's CPU threads in a trainer process: sized to the CPUs the process may use, waiting passively.

Each case runs in a fresh interpreter: OpenMP reads its wait policy once, when torch loads, so what
matters is the environment and the thread count the process has *after* ``torch_threads`` loaded torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

_PROBE = """
import json, os, sys
# What the service and the Job import at start-up: none of it may load torch (OpenMP would have read its
# wait policy by then).
import scalerec_trainer.main, scalerec_trainer.train
from scalerec_core.service import available_cpus
from scalerec_trainer.config import TrainerSettings
from scalerec_trainer.pipeline import torch_threads
assert "torch" not in sys.modules, "the trainer loaded torch before sizing its threads"
threads = torch_threads(TrainerSettings())
import torch
print(json.dumps({"threads": threads, "torch": torch.get_num_threads(), "policy": os.environ.get("OMP_WAIT_POLICY"),
                  "cpus": available_cpus()}))
"""

_CLEAN = ("OMP_WAIT_POLICY", "TRAIN_THREADS", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS")


def _env(**env: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in _CLEAN}, **env}


def _torch_default() -> int:
    """torch's own thread count in a process that sets none (the physical cores)."""
    code = "import torch; print(torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    return int(out.stdout.strip())


def _probe(**env: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _PROBE], env=_env(**env), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_threads_follow_the_cpus_the_process_may_use_and_wait_passively() -> None:
    seen = _probe()
    assert seen["threads"] == seen["torch"] == min(_torch_default(), int(str(seen["cpus"])))
    assert seen["policy"] == "PASSIVE"


def test_torchrun_local_processes_share_the_cpus() -> None:
    seen = _probe(LOCAL_WORLD_SIZE="2")
    assert seen["threads"] == seen["torch"] == max(1, min(_torch_default(), int(str(seen["cpus"])) // 2))
    # torchrun's own OMP_NUM_THREADS=1 per process is kept
    assert _probe(LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")["torch"] == 1


def test_settings_and_an_explicit_policy_win() -> None:
    seen = _probe(TRAIN_THREADS="3", OMP_WAIT_POLICY="ACTIVE")
    assert seen["threads"] == seen["torch"] == 3
    assert seen["policy"] == "ACTIVE"  # the environment's own, kept (the setting reads the same variable)
