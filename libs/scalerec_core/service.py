"""Process start-up shared by the services: logging, telemetry, uvicorn."""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scalerec_core.logging import configure_logging
from scalerec_core.settings import ServiceSettings
from scalerec_core.telemetry import setup_telemetry


def bootstrap(settings: ServiceSettings) -> None:
    configure_logging(
        settings.service_name, settings.log_level, settings.log_format, settings.log_id_key.get_secret_value()
    )
    setup_telemetry(settings)


@contextmanager
def long_lived_heap(young_threshold: int | None = None) -> Iterator[None]:
    """Run the body (a service's life after start-up) with what start-up built out of the cyclic GC's way.

    Everything allocated so far (imports, clients, a model's tables) lives as long as the process:
    one collection, then ``gc.freeze()``, so that later full collections scan only what the work made
    since (the ranker's full-collection pause on the demo: 67 ms -> 6 ms, benchmarks/ranker_gc_pauses.py).
    ``young_threshold`` replaces the youngest generation's threshold (700 objects by default) for a
    process that allocates in large batches: the preprocessor's batch of 2,000 events makes far more
    than 700 objects that live until the batch ends, and collecting every 700 of them promoted them
    into older generations that were then collected too (benchmarks/ingest_throughput.py: 13 % of its
    CPU per event at 10,000).  Both are undone on exit, so a process that runs more than one app
    (the tests) is left as it was.
    """
    gc.collect()
    gc.freeze()
    before = gc.get_threshold()
    if young_threshold is not None:
        gc.set_threshold(young_threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def available_cpus() -> int:
    """CPUs this process may use: the cgroup's CPU quota (a pod's limit) if set, else its affinity mask."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def serve(app: Any, host: str, port: int, log_level: str = "info", workers: int = 1) -> None:
    """Run ``app`` under uvicorn; ``app`` may be an import string of an app factory when ``workers`` > 1
    (each worker process then builds its own app, clients and model activation)."""
    import uvicorn

    factory = isinstance(app, str)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        lifespan="on",
        factory=factory,
        workers=workers if factory and workers > 1 else None,
    )
