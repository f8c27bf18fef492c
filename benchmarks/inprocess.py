"""One HTTP request sent straight into an ASGI app, for the in-process benchmarks (no sockets, no server).

Imported by ``collector_throughput.py`` and ``ranker_request_cpu.py``, which run as scripts from the
repository root (``benchmarks/`` is then first on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def request(
    app: App,
    method: str,
    path: str,
    *,
    query: bytes = b"",
    body: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    port: int = 8080,
) -> tuple[int, bytes]:
    """(status, body) of one request; the client waits for the answer after sending its body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"bench"), *headers],
        "server": ("127.0.0.1", port),
        "client": ("127.0.0.1", 50000),
    }
    sent = False
    status = 0
    answer: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # a client that waits for the answer, not one that went away
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            answer.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(answer)


async def settled_versions(recommender: Any, timeout_s: float = 120, quiet_s: float = 3) -> dict[str, int]:
    """What the in-process ranker serves once it has settled: a running experiment's versions load in the
    background after start-up, and until they have the champion answers everyone (two runs would differ)."""
    models = recommender.models
    served, stable_since, deadline = models.served_versions(), time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() < deadline and (not served or time.monotonic() - stable_since < quiet_s):
        await asyncio.sleep(0.2)
        if (now := models.served_versions()) != served:
            served, stable_since = now, time.monotonic()
    return served
