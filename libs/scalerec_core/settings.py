"""Settings base class shared by every service.

Each service defines exactly one subclass with its own fields; values come from
environment variables (upper-case names, lower-case fields).  Nothing here reads
the environment at import time: a service builds its settings inside
``create_app()`` through a cached getter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from scalerec_events.topics import DEFAULT_DEPLOYMENT, DEPLOYMENT_PATTERN, Topic, TopicSpec, all_topics, topic_name

from scalerec_core.auth import KeyRing


class ServiceSettings(BaseSettings):
    """Fields every service shares: where its backends live and how it reports."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    service_name: str = "scalerec"
    deployment: str = Field(
        default=DEFAULT_DEPLOYMENT,
        pattern=DEPLOYMENT_PATTERN,
        description="Namespace for topic names (<DEPLOYMENT>.events.raw.v1, ...), consumer groups, HBase tables "
        "and cache keys: deployments sharing one Kafka, HBase or Memcached never see each other's data.",
    )
    data_dir: Path = Field(
        default=Path("var"),
        description="Folder for embedded backends' files (bus log, store, model repository).",
    )
    bus_url: str = Field(
        default="",
        description="sqlite:///path/bus.db (embedded) or kafka://host:9092[,host:9092][?replication_factor=3"
        "&min_insync_replicas=2&compression_type=lz4...] (parameters in scalerec_adapters/kafka_bus.py). "
        "Empty: embedded under DATA_DIR.",
    )
    store_url: str = Field(
        default="",
        description="sqlite:///path/store.db (embedded) or hbase://host:9090[?pool=8&timeout_ms=15000] (timeout_ms: "
        "socket timeout of a Thrift call; give the ranker about a second, so a hung HBase frees its connections "
        "soon after its requests' budget). Empty: embedded under DATA_DIR.",
    )
    cache_url: str = Field(
        default="memory://",
        description="memory://?max_items=N (in-process) or memcached://host:11211[,host:11211].",
    )
    topic_partitions: int = Field(default=4, ge=1, le=1024)
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "text"
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otel_endpoint: str = Field(default="http://127.0.0.1:4318", description="OTLP/HTTP endpoint.")
    api_keys: str = Field(
        default="",
        description="Comma-separated API keys (X-API-Key header or bearer token), each with its scopes: "
        "key:ingest+serve+erase+admin; a key without ':' has every scope.",
    )
    rate_limit_per_second: float = Field(
        default=0,
        ge=0,
        description="Requests per second per API key (or client address when open), counted in CACHE_URL "
        "so that every replica shares one budget (memory:// counts per process); 0 disables.",
    )
    auth_failures_per_minute: float = Field(
        default=30,
        ge=0,
        description="Failed authentications (unknown or missing key) allowed per client address per minute, "
        "counted like the rate limit (shared through CACHE_URL's Memcached); beyond it 429 with Retry-After, so "
        "keys cannot be guessed at speed. On even when RATE_LIMIT_PER_SECOND is 0; 0 disables.",
    )
    auth: Literal["enabled", "disabled"] = Field(
        default="enabled",
        description="enabled: every route but health needs a key with its scope, and a service without "
        "API_KEYS refuses to start. disabled: open (the demo and `scalerec serve` only).",
    )

    def resolved_bus_url(self) -> str:
        return self.bus_url or f"sqlite:///{(self.data_dir / 'bus.db').resolve()}"

    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{(self.data_dir / 'store.db').resolve()}"

    def topic(self, topic: Topic) -> str:
        """Name of ``topic`` in this deployment: two deployments on one Kafka never read each other's events."""
        return topic_name(topic, self.deployment)

    def topics(self) -> list[TopicSpec]:
        """Every topic of this deployment (and its dead-letter twin), as the bus creates them."""
        return all_topics(self.topic_partitions, self.deployment)

    def group(self, name: str) -> str:
        """Consumer group id for ``name`` in this deployment: two deployments on one Kafka never share a group."""
        return f"{self.deployment}.{name}"

    def rate_limit_storage(self) -> str:
        """Where rate-limit counters live: the deployment's Memcached when there is one."""
        return self.cache_url.split("?", 1)[0] if self.cache_url.startswith("memcached://") else "memory://"

    def key_ring(self) -> KeyRing | None:
        """The accepted keys; None when AUTH=disabled. Raises when auth is on and no key is configured."""
        if self.auth == "disabled":
            return None
        ring = KeyRing.parse(self.api_keys)
        if not ring:
            raise ValueError(
                f"{self.service_name}: no API_KEYS configured; set API_KEYS (key:scope+scope,...) "
                "or AUTH=disabled to run open"
            )
        return ring


def _repository_under_data_dir(validated: dict[str, Any]) -> Path:
    # Pydantic passes the fields validated so far (data_dir comes first) and skips this when one failed.
    return Path(validated["data_dir"]) / "model_repository"


class ModelRepositorySettings(ServiceSettings):
    """Settings of a service that reads or writes the model repository (trainer, evaluator, ranker)."""

    model_repository: Path = Field(
        default_factory=_repository_under_data_dir,
        description="Triton model repository folder; under DATA_DIR unless set, so that a service started "
        "in a checkout never writes into the committed example model_repository/.",
    )
