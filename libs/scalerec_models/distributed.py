"""Device choice and ``torch.distributed`` helpers for data-parallel training under ``torchrun``.

Everything degrades to a single process when no process group is initialised,
so ``scalerec eval-dataset``, the trainer service and the tests never need to
know whether they run distributed.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → cuda when a GPU is visible, else cpu; anything else is taken literally ("cpu", "cuda:1")."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


def backend_for(device: torch.device) -> str:
    """nccl for GPUs, gloo for CPUs (the only backend that all-reduces sparse gradients on CPU)."""
    return "nccl" if device.type == "cuda" else "gloo"


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Only rank 0 writes checkpoints, exports versions and logs progress."""
    return rank() == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when launched plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> bool:
    """Join the process group torchrun describes (env://) when ``WORLD_SIZE`` > 1; True if distributed.

    With CUDA, each process takes the GPU numbered by ``LOCAL_RANK``.
    """
    if env_world_size() <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend_for(dev), timeout=timedelta(seconds=timeout_s))
    log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend_for(dev))
    return True


def local_device(device: str = "auto") -> torch.device:
    """The device this process trains on: with several processes on CUDA, the GPU of ``LOCAL_RANK``."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s object on every rank (identity when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
