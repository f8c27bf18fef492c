"""The preprocessor's one settings class (env vars, upper-case)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from scalerec_core.settings import ServiceSettings


class PreprocessorSettings(ServiceSettings):
    service_name: str = "preprocessor"
    host: str = "127.0.0.1"
    port: int = Field(default=8082, ge=1, le=65535)
    consumer_group: str = "preprocessor"
    poll_max_records: int = Field(default=2000, ge=1, description="Most messages handled in one batch.")
    history_len: int = Field(default=50, ge=1, le=1000, description="Recent items kept per user in the hot cache.")
    user_cache_ttl_seconds: int = Field(default=3600, ge=0)
    timeline_memo_entries: int = Field(
        default=500_000,
        ge=0,
        description=(
            "History entries of recently written users kept parsed in memory (~350 bytes each with their cached "
            "bytes), so that a user's next batch skips decoding its timeline; 0 turns the memo off."
        ),
    )
    workers: int = Field(
        default=1,
        ge=0,
        description=(
            "Consumer processes: 1 = the consumers run in the API's process; N > 1 = N child processes in the same "
            "consumer groups, each with its share of the partitions (no more than TOPIC_PARTITIONS do work). A "
            "consumer waits on its backends part of the time: on 2 cores with embedded backends 2 processes "
            "measured ~19-20k events/s and 4 ~23k. 0 = the CPUs this process may use."
        ),
    )
    max_retries: int = Field(
        default=5,
        ge=0,
        description=(
            "Attempts a message that fails after parsing (not a backend outage, which is retried without limit) "
            "gets before it goes to the DLQ with the reason; 0 means 1."
        ),
    )

    def stream_group(self, stream: str) -> str:
        """Consumer group of one input stream (items, events, erasure): ``<DEPLOYMENT>.<CONSUMER_GROUP>.<stream>``.

        The chart's KEDA ScaledObject watches the lag of ``stream_group("events")``; tests/charts
        checks it against this method.
        """
        return self.group(f"{self.consumer_group}.{stream}")


@lru_cache
def get_settings() -> PreprocessorSettings:
    return PreprocessorSettings()
