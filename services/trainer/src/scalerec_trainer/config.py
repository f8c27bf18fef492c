"""The trainer's one settings class (env vars, upper-case)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from scalerec_core.settings import ModelRepositorySettings


class TrainerSettings(ModelRepositorySettings):
    service_name: str = "trainer"
    host: str = "127.0.0.1"
    port: int = Field(default=8083, ge=1, le=65535)
    consumer_group: str = "trainer"
    train_after_examples: int = Field(
        default=0, ge=0, description="Train automatically after this many new examples; 0 turns it off."
    )
    min_examples: int = Field(default=100, ge=1, description="Refuse to train on fewer examples.")
    model_size: Literal["demo", "small", "large"] = "demo"
    max_epochs: int = Field(
        default=0, ge=0, description="Override the size preset's maximum epochs of both models; 0 keeps it."
    )
    time_budget_s: float = Field(
        default=0,
        ge=0,
        description=(
            "Optional wall-clock cap per model (s): training stops after the epoch that passes it. "
            "0 = none: the preset's fixed epochs with early stopping decide, so results do not depend on load."
        ),
    )
    train_threads: int = Field(
        default=0,
        ge=0,
        description=(
            "CPU threads torch trains with (intra-op). 0 = torch's default (the node's physical cores, or "
            "OMP_NUM_THREADS, which torchrun sets to 1) capped by the CPUs this process may use (the pod's CPU "
            "limit, else its affinity mask) shared among torchrun's local processes."
        ),
    )
    omp_wait_policy: Literal["passive", "active"] = Field(
        default="passive",
        description=(
            "OMP_WAIT_POLICY of torch's OpenMP threads, set before torch loads. passive: an idle thread "
            "sleeps, so training on cores it shares (the demo's services, other pods) is not slowed several-fold "
            "by threads spinning while the one they wait for has no core; active: spin, for cores of its own."
        ),
    )
    seed: int = 7
    model_version_counter: str = Field(
        default="",
        pattern=r"^(kubernetes:configmap/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)?$",
        description=(
            "Where version numbers are taken when the repository is one copy of several (object storage): "
            "kubernetes:configmap/<name>, a ConfigMap of the pod's namespace updated with optimistic concurrency "
            "through the pod's service account (the chart sets it). Empty: the repository's own lock and count, "
            "which hold where every trainer shares one file system."
        ),
    )

    keep_versions: int = Field(
        default=5,
        ge=1,
        description="Model versions kept in the repository: older ones are deleted after each run, but never "
        "the champion, anything newer than it, or a version a config still serves.",
    )
    holdout_fraction: float = Field(
        default=0.1, gt=0, lt=0.5, description="Newest share of time kept out of training for the evaluator."
    )
    train_device: str = Field(
        default="auto",
        description=(
            "Device to train on: auto (a GPU when one is visible, else the CPU), cpu, cuda or cuda:N. "
            "On CUDA, forward and loss run in bf16 autocast; under torchrun each process takes GPU LOCAL_RANK."
        ),
    )
    checkpoint_dir: Path | None = Field(
        default=None,
        description=(
            "Folder for a checkpoint per model after every epoch (weights, optimizer, epoch, best score); "
            "a restarted Job resumes from it. Unset: no checkpoints. Under torchrun all ranks must see it."
        ),
    )

    @field_validator("omp_wait_policy", mode="before")
    @classmethod
    def _policy_any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value  # OpenMP takes PASSIVE and passive


@lru_cache
def get_settings() -> TrainerSettings:
    return TrainerSettings()
