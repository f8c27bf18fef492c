"""The ranker's one settings class (env vars, upper-case)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from scalerec_core.settings import ModelRepositorySettings, ServedListSettings


class RankerSettings(ModelRepositorySettings, ServedListSettings):
    service_name: str = "ranker"
    host: str = "127.0.0.1"
    port: int = Field(default=8084, ge=1, le=65535)
    model_name: str = "scalerec_ranker"
    scorer_url: str = Field(
        default="onnxruntime://?inline=1",
        description="onnxruntime://[?inline=1&threads=N&max_batch_rows=N] or triton://host:8001. "
        "inline=1 scores on the event loop (best for models under ~1 ms; one worker process per core).",
    )
    max_body_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="Largest request body accepted (POST /v1/recommendations: 500 exclude ids of 128 characters "
        "are ~65 KB). A larger body is a 413 before it is parsed.",
    )
    default_k: int = Field(default=10, ge=1)
    max_k: int = Field(default=100, ge=1)
    fresh_item_slots: float = Field(default=0.1, ge=0, le=1, description="Share of slots that explore fresh items.")
    scoring_timeout_ms: int = Field(default=200, ge=1)
    request_budget_ms: int = Field(
        default=500,
        ge=10,
        description="Per-request time budget: what is not done by then (history read, retrieval, scoring) is "
        "skipped and the answer is flagged as a fallback, so a slow store, cache or Triton never holds a request longer.",
    )
    backend_threads: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Threads for cache and store reads on the request path.",
    )
    backend_queue: int = Field(
        default=64,
        ge=0,
        description="Reads that may wait for one of BACKEND_THREADS (each until its request's budget ends); a "
        "request that finds the queue full too (a slow backend) serves without the user's history at once.",
    )
    backend_slow_ms: int = Field(
        default=100,
        ge=1,
        description="A cache or store read slower than this (or failing) counts against that backend's circuit "
        "breaker; BREAKER_FAILURES in a row open it for BREAKER_RESET_S (the backend is skipped meanwhile).",
    )
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=5.0, gt=0)
    consumer_group_prefix: str = Field(
        default="ranker", description="Every replica reads model announcements in a group of its own."
    )
    baseline_refresh_seconds: int = Field(default=30, ge=1)
    explain_min_similarity: float = Field(
        default=0.7,
        ge=-1,
        le=1,
        description="Cosine of two items' embeddings (centred on the items' mean) under which no 'because you "
        "viewed' is shown. On the demo's models 0.7 kept 98-100 % of the explanations within the item's own "
        "category (0.6 let 12-14 % of unrelated ones through).",
    )
    user_state_ttl_seconds: int = Field(
        default=30,
        ge=1,
        description="How long a user state read from the store stays in the cache (the only way an embedded "
        "ranker sees new events). A request that finds one past three quarters of it is answered from the cache "
        "and the state is read again behind it, so active users never wait for the store.",
    )
    candidate_vectors_max_mb: int = Field(
        default=256,
        ge=0,
        description="Memory (MiB per model version and worker) for candidate vectors computed once per item when a "
        "version with candidate graphs is activated on the in-process scorer; a catalogue that needs more is scored "
        "with the whole graph instead. 0 turns them off.",
    )
    workers: int = Field(
        default=0,
        ge=0,
        description="uvicorn worker processes, each listening on its own SO_REUSEPORT socket; 0 = the CPUs this "
        "process may use.",
    )


@lru_cache
def get_settings() -> RankerSettings:
    return RankerSettings()
