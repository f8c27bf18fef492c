"""Settings base class shared by every service.

Each service defines exactly one subclass with its own fields; values come from
environment variables (upper-case names, lower-case fields).  Nothing here reads
the environment at import time: a service builds its settings inside
``create_app()`` through a cached getter.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from scalerec_events.topics import DEFAULT_DEPLOYMENT, DEPLOYMENT_PATTERN, Topic, TopicSpec, all_topics, topic_name

from scalerec_core.auth import KeyRing
from scalerec_core.tls import ReloadingSSLContext


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
    http_keep_alive_s: float = Field(
        default=75,
        gt=0,
        description="Seconds the service keeps an idle HTTP/1.1 connection open (uvicorn's timeout_keep_alive). "
        "Keep it longer than the idle timeout of any proxy or load balancer that pools connections to the pods "
        "(ingress-nginx's upstream-keepalive-timeout and AWS ALB's idle timeout are 60 s; Google Cloud's load "
        "balancers keep 600 s: give those 620), so that the proxy closes an idle connection first: when the "
        "service closes it first, a request the proxy sends on it that instant fails with a 502. A new connection "
        "that sends no request is closed after the same time.",
    )
    http_header_timeout_s: float = Field(
        default=10,
        gt=0,
        description="Seconds a client has to send a request's line and headers once it has begun it (nginx's "
        "client_header_timeout): a slower one is answered 408 and disconnected, so connections that trickle a "
        "request (slowloris) cannot hold the service's sockets.",
    )
    http_body_timeout_s: float = Field(
        default=60,
        gt=0,
        description="Seconds a client has to send a request's body once its headers are in: a slower one is "
        "answered 408 and disconnected (the request is not handled). At the collector's 4 MiB limit the default "
        "asks for ~70 KB/s; behind an ingress that buffers bodies (ingress-nginx does) pods get them at once. "
        "Also how long a client may leave an answer unread once the socket's buffer is full before it is cut off.",
    )
    http_max_header_bytes: int = Field(
        default=128 * 1024,
        ge=8 * 1024,
        description="Largest request line plus headers, in bytes: a larger head is refused with 431 as soon as "
        "it passes the limit, not read to its end. URLs are limited to 65,535 bytes whatever this says (what "
        "uvicorn's URL parser takes; 414 past it). ingress-nginx's default buffers (large_client_header_buffers "
        "4 8k) refuse request lines over 8 KiB before they reach a pod.",
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="Proxies whose X-Forwarded-For / X-Forwarded-Proto are trusted (uvicorn's list: addresses, "
        "networks, or *). Empty: none, and the client is the connection's peer. The rate limits count per client "
        "address: trusting a header anyone can send (uvicorn trusts it from 127.0.0.1 by default, which a mesh "
        "sidecar or kubectl port-forward is) let a caller pick a new address for every failed key.",
    )
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "text"
    log_id_key: SecretStr = Field(
        default=SecretStr(""),
        description="Key of the keyed hash (HMAC-SHA256) that names users in log lines instead of their ids. "
        "Give every service the same secret so their lines about one user can be joined; empty: a random "
        "key per process.",
    )
    bus_retention_hours: float = Field(
        default=168,
        gt=0,
        description="How long the bus keeps raw events, training examples, impressions and every dead-letter "
        "topic (Kafka retention.ms, applied to existing topics too; the embedded bus trims by age): the "
        "bound on how long an erased user's data outlives the erasure in bus copies.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How a kafka:// BUS_URL's connections are secured: PLAINTEXT, SSL (TLS; with "
        "KAFKA_SSL_CERTFILE, mutual TLS), SASL_SSL (a user and password over TLS: Confluent Cloud, MSK, Aiven) or "
        "SASL_PLAINTEXT (the password in clear: for a network you trust alone).",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512",
        description="SASL mechanism of the SASL_* protocols (Confluent Cloud takes PLAIN, MSK SCRAM-SHA-512).",
    )
    kafka_sasl_username: str = Field(default="", description="SASL user; needed by the SASL_* protocols.")
    kafka_sasl_password: SecretStr = Field(
        default=SecretStr(""), description="SASL password; needed by the SASL_* protocols."
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the CAs the brokers' certificates are checked against (SSL, SASL_SSL); unset: "
        "the system's CAs. The broker's name is checked against its certificate either way.",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, description="PEM client certificate for mutual TLS (with KAFKA_SSL_KEYFILE)."
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key of KAFKA_SSL_CERTFILE (encrypted: with KAFKA_SSL_KEY_PASSWORD)."
    )
    kafka_ssl_key_password: SecretStr = Field(
        default=SecretStr(""),
        description="Passphrase of an encrypted KAFKA_SSL_KEYFILE; empty: the key must be unencrypted (an "
        "encrypted one then stops the service at start naming this setting, never a passphrase prompt).",
    )
    deployment_environment: str = Field(
        default="development",
        description="The deployment.environment resource attribute on every span and metric (production, "
        "staging, ...); OTEL_RESOURCE_ATTRIBUTES=deployment.environment=... overrides it.",
    )
    # The standard OpenTelemetry variables, read here like every other setting (the SDK is not left
    # to read the environment on its own): scalerec_core/telemetry.py builds the providers from them.
    otel_service_name: str = Field(default="", description="Overrides SERVICE_NAME as service.name.")
    otel_resource_attributes: str = Field(
        default="", description="Extra resource attributes, key=value,key=value (they win over ours)."
    )
    otel_traces_exporter: str = Field(
        default="none",
        pattern=r"^(none|otlp|console)(,(otlp|console))*$",
        description="none, otlp (OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT) or console; comma-separated for several.",
    )
    otel_metrics_exporter: str = Field(
        default="prometheus",
        pattern=r"^(none|prometheus|otlp|console)(,(prometheus|otlp|console))*$",
        description="prometheus serves GET /metrics on the service's port (no API key, like the health "
        "endpoints: it holds route templates and counts, no ids); otlp pushes to OTEL_EXPORTER_OTLP_ENDPOINT; "
        "none turns /metrics off (404).",
    )
    otel_exporter_otlp_endpoint: str = Field(
        default="http://127.0.0.1:4318", description="OTLP/HTTP base URL (/v1/traces, /v1/metrics appended)."
    )
    otel_traces_sampler: Literal[
        "",
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ] = Field(
        default="",
        description="Empty: parentbased_always_on when traces are exported, always_off when not "
        "(trace context still flows, no span is recorded).",
    )
    otel_traces_sampler_arg: float | None = Field(
        default=None, ge=0, le=1, description="Ratio for the traceidratio samplers (1.0 when unset)."
    )
    otel_metric_export_interval: int = Field(
        default=15_000, ge=100, description="Milliseconds between pushes of the otlp/console metric exporters."
    )
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

    def kafka_client_options(self) -> dict[str, Any]:
        """aiokafka's connection keywords for KAFKA_SECURITY_PROTOCOL and its settings (none for PLAINTEXT).

        Raises ValueError naming the setting that is missing, misplaced or unreadable, so a service
        with a wrong Kafka security configuration stops at start-up with that message."""
        protocol = self.kafka_security_protocol
        tls = protocol in ("SSL", "SASL_SSL")
        sasl = protocol.startswith("SASL_")
        files = {
            "KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
            "KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
            "KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile,
        }
        given = [name for name, path in files.items() if path is not None]
        if given and not tls:
            raise ValueError(f"{', '.join(given)} set, but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS")
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together (mutual TLS needs both)")
        if self.kafka_ssl_key_password.get_secret_value() and self.kafka_ssl_keyfile is None:
            raise ValueError("KAFKA_SSL_KEY_PASSWORD set without KAFKA_SSL_KEYFILE (the key it unlocks)")
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value()):
            raise ValueError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        if protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": protocol}
        if tls:
            options["ssl_context"] = self._kafka_ssl_context()
        if sasl:
            options.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password.get_secret_value(),
            )
        return options

    def _kafka_ssl_context(self) -> ReloadingSSLContext:
        try:
            # Reloadable: the Kafka bus loads the files again when a renewed certificate replaces them.
            context = ReloadingSSLContext.client(self.kafka_ssl_cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"KAFKA_SSL_CAFILE={self.kafka_ssl_cafile}: not a readable PEM CA file ({exc})") from exc
        if self.kafka_ssl_certfile is not None and self.kafka_ssl_keyfile is not None:
            # A passphrase file put in a Secret with --from-file usually ends in a newline that is not part of it.
            passphrase = self.kafka_ssl_key_password.get_secret_value().removesuffix("\n").removesuffix("\r")
            files = f"KAFKA_SSL_CERTFILE={self.kafka_ssl_certfile} / KAFKA_SSL_KEYFILE={self.kafka_ssl_keyfile}"

            def key_password() -> str:
                # Asked for only when the key is encrypted. Without a callable OpenSSL would prompt on the
                # terminal for the passphrase: a service started from a shell would wait there, silently.
                if not passphrase:
                    raise ValueError(f"{files}: the key is encrypted; set KAFKA_SSL_KEY_PASSWORD to its passphrase")
                return passphrase

            try:
                context.use_certificate(self.kafka_ssl_certfile, self.kafka_ssl_keyfile, key_password)
            except (OSError, ssl.SSLError) as exc:
                unlocked = " or KAFKA_SSL_KEY_PASSWORD is not its passphrase" if passphrase else ""
                raise ValueError(f"{files}: not a readable PEM certificate and its key{unlocked} ({exc})") from exc
        return context

    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{(self.data_dir / 'store.db').resolve()}"

    def topic(self, topic: Topic) -> str:
        """Name of ``topic`` in this deployment: two deployments on one Kafka never read each other's events."""
        return topic_name(topic, self.deployment)

    def topics(self) -> list[TopicSpec]:
        """Every topic of this deployment (and its dead-letter twin), as the bus creates them."""
        return all_topics(self.topic_partitions, self.deployment, retention_ms=int(self.bus_retention_hours * 3600_000))

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


class ServedListSettings(ServiceSettings):
    """How an answer is built from a model version: the ranker serves lists this way and the evaluator
    measures lists built the same way (``served_*`` metrics), so both read these settings; give both
    services the same values."""

    candidates_per_source: int = Field(
        default=200, ge=1, description="Candidates each generator (retrieval, item-item, trending) may add."
    )
    max_candidates: int = Field(default=300, ge=1, description="Candidates scored per answer, sources merged.")
    category_cap: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Most items of one category in an answer, as a share of k (rounded up, at least 2): the "
        "diversity cap of re-ranking; 1 turns it off. It costs relevance: on the demo's holdout 0.5 kept 83 % of "
        "the hits of the uncapped top 10 (NDCG@10 -6.5 %), 0.7 93 % (benchmarks/rerank_quality.py). A user "
        "whose history holds one category gets half the answer from others at 0.5.",
    )
