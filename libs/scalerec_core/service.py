"""Process start-up shared by the services: logging, telemetry, uvicorn."""

from __future__ import annotations

from typing import Any

from scalerec_core.logging import configure_logging
from scalerec_core.settings import ServiceSettings
from scalerec_core.telemetry import setup_telemetry


def bootstrap(settings: ServiceSettings) -> None:
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    setup_telemetry(settings.service_name, settings.otel_exporter, settings.otel_endpoint)


def serve(app: Any, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False, lifespan="on")
