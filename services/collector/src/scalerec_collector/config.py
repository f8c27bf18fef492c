"""The collector's one settings class (env vars, upper-case)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from scalerec_core.settings import ServiceSettings


class CollectorSettings(ServiceSettings):
    service_name: str = "collector"
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=1, le=65535)
    max_batch_events: int = Field(default=1000, ge=1, description="Most events in one POST /v1/events.")
    max_batch_items: int = Field(default=1000, ge=1, description="Most items in one POST /v1/items.")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_message_bytes: int = Field(
        default=1_000_000,
        ge=4096,
        description=(
            "Largest bus message (value, key and headers): keep it at or under Kafka's max.request.size and the "
            "topic's max.message.bytes (1 MiB by default). A larger item is refused with 413 for that element."
        ),
    )
    workers: int = Field(
        default=1,
        ge=0,
        description=(
            "uvicorn worker processes, each listening on its own SO_REUSEPORT socket; 0 = the CPUs this process "
            "may use. Validating and re-encoding events is CPU-bound Python: on 2 cores 2 workers took ~46k "
            "events/s where 1 took ~36k (embedded bus). Each "
            "worker remembers its own recent event ids (DEDUPE_WINDOW); the preprocessor dedupes for real."
        ),
    )
    dedupe_window: int = Field(
        default=200_000, ge=0, description="Recent event_ids remembered to drop retried duplicates at the edge."
    )


@lru_cache
def get_settings() -> CollectorSettings:
    return CollectorSettings()
