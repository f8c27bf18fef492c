"""Drive a running ScaleRec over its HTTP APIs: ingest, wait, train, evaluate, ask.

Shared by ``scalerec demo`` and the end-to-end tests, so the demo shows exactly
what the tests assert.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from pydantic import BaseModel

ProgressFn = Callable[[int], None]

# The services closed an idle keep-alive connection after 5 s (uvicorn's default; HTTP_KEEP_ALIVE_S now,
# 75 s unless set lower); httpx kept one for 5 s too, so a request could go out on a connection the server
# was closing that instant and fail with ReadError (seen once: `make demo`'s simulated shoppers, 3,823
# requests in). The client, like a proxy, drops idle connections first.
KEEPALIVE_EXPIRY_S = 2.0
# What a POST of records may meet on the way and retry: the service busy (503: its bus briefly
# unavailable) or a connection that broke under the request.  Records carry their ids (event_id,
# item_id) and the collector drops what it has seen, so a batch sent twice is stored once.
_RETRY_STATUS = 503


def client(timeout: float, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """An HTTP client for the services' APIs (keep-alive shorter than theirs)."""
    return httpx.AsyncClient(timeout=timeout, headers=headers, limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S))


async def post_with_retries(
    http: httpx.AsyncClient, url: str, body: dict[str, Any], attempts: int = 30, max_wait_s: float = 5.0
) -> httpx.Response | None:
    """POST ``body`` (records with ids: retrying is safe), again after a 503 or a broken connection with
    backoff; the last answer, or None when every attempt broke."""
    answer: httpx.Response | None = None
    for attempt in range(attempts):
        try:
            answer = await http.post(url, json=body)
        except httpx.TransportError:
            answer = None
        else:
            if answer.status_code != _RETRY_STATUS:
                return answer
        await asyncio.sleep(min(max_wait_s, 0.2 * 2**attempt))
    return answer


class PipelineError(RuntimeError):
    pass


def _dump(models: Sequence[BaseModel]) -> list[dict[str, Any]]:
    return [m.model_dump(mode="json", exclude_none=True) for m in models]


async def post_batches(
    url: str,
    key: str,
    records: Sequence[BaseModel],
    batch_size: int,
    concurrency: int = 4,
    progress: ProgressFn | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, int]:
    """POST records in batches with a few in flight; retries 503s (bus briefly unavailable) and broken
    connections (:func:`post_with_retries`)."""
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0}
    sem = asyncio.Semaphore(concurrency)
    async with client(60, headers) as http:

        async def one(batch: Sequence[BaseModel]) -> None:
            body = {key: _dump(batch)}
            async with sem:
                r = await post_with_retries(http, url, body)
            if r is None or r.status_code == _RETRY_STATUS:
                raise PipelineError(f"POST {url}: still unavailable after retries")
            if r.status_code != 202:
                raise PipelineError(f"POST {url}: HTTP {r.status_code}: {r.text[:300]}")
            data = r.json()
            for k in totals:
                totals[k] += int(data.get(k, 0))
            if progress:
                progress(len(batch))

        await asyncio.gather(*(one(records[i : i + batch_size]) for i in range(0, len(records), batch_size)))
    return totals


def poll_until(fn: Callable[[], Any], timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise PipelineError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def wait_preprocessed(
    preprocessor: str,
    expected_stored: int,
    timeout: float = 600,
    progress: ProgressFn | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Until the preprocessor has stored ``expected_stored`` events and has no lag."""
    seen = {"n": 0}

    def check() -> dict[str, Any] | None:
        stats = httpx.get(f"{preprocessor}/v1/stats", timeout=10, headers=headers).json()
        stored = stats["events_stored"]
        if progress and stored > seen["n"]:
            progress(stored - seen["n"])
            seen["n"] = stored
        lag = sum(w["lag"] for w in stats["workers"].values())
        return stats if stored >= expected_stored and lag == 0 else None

    return poll_until(check, timeout, 0.5, f"{expected_stored} events stored by the preprocessor")


def train(
    trainer: str,
    timeout: float = 900,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Start a training job and wait for it; ``on_update`` sees the job (with its per-epoch progress) each poll."""
    response = httpx.post(f"{trainer}/v1/train", timeout=30, headers=headers)
    if response.status_code >= 400:
        raise PipelineError(f"POST {trainer}/v1/train: HTTP {response.status_code}: {response.text[:300]}")
    job = response.json()

    def done() -> dict[str, Any] | None:
        j = httpx.get(f"{trainer}/v1/train/{job['job_id']}", timeout=10, headers=headers).json()
        if on_update is not None:
            on_update(j)
        return j if j["status"] in ("succeeded", "failed") else None

    result = poll_until(done, timeout, 1.0, "training")
    if result["status"] != "succeeded":
        raise PipelineError(f"training failed: {result['error']}")
    return result


def wait_report(
    evaluator: str, version: int, timeout: float = 600, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        r = httpx.get(f"{evaluator}/v1/reports/{version}", timeout=10, headers=headers)
        return r.json() if r.status_code == 200 else None

    return poll_until(ready, timeout, 1.0, f"the evaluation of model version {version}")


def wait_serving(
    ranker: str, version: int, timeout: float = 120, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    def serving() -> dict[str, Any] | None:
        m = httpx.get(f"{ranker}/v1/model", timeout=10, headers=headers).json()
        return m if m["model_version"] == version else None

    return poll_until(serving, timeout, 0.5, f"the ranker to serve model version {version}")


def recommend(
    ranker: str, user_id: str, k: int = 10, headers: dict[str, str] | None = None, **params: str
) -> dict[str, Any]:
    r = httpx.get(
        f"{ranker}/v1/recommendations", params={"user_id": user_id, "k": k, **params}, timeout=30, headers=headers
    )
    r.raise_for_status()
    return r.json()
