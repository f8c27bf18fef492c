"""Process start-up shared by the services: logging, telemetry, uvicorn."""

from __future__ import annotations

import math
import os
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
