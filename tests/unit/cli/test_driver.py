"""The CLI's HTTP driver against a server that breaks a connection under a request, as a service's uvicorn
does when it closes an idle keep-alive connection the instant the client reuses it."""

from __future__ import annotations

import asyncio
import json

from scalerec_cli import driver
from scalerec_core.settings import ServiceSettings
from scalerec_events.models import Item


class _Flaky:
    """A bare HTTP/1.1 server: the first ``broken`` requests get their connection closed unanswered, the
    rest ``202 {"accepted": <records>}``."""

    def __init__(self, broken: int) -> None:
        self.broken = broken
        self.requests = 0
        self.bodies: list[dict[str, object]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = json.loads(await reader.readexactly(length))
                self.requests += 1
                if self.requests <= self.broken:
                    return  # closed in finally, nothing answered
                self.bodies.append(body)
                answer = json.dumps({"accepted": len(body["items"]), "duplicates": 0, "rejected": 0}).encode()
                writer.write(
                    b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(answer)}\r\n\r\n".encode()
                    + answer
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _items(n: int) -> list[Item]:
    return [Item(item_id=f"i{n:05d}", category="tea", title=f"tea {n}") for n in range(n)]


def test_a_connection_broken_under_a_post_is_retried_and_the_batch_counted_once() -> None:
    async def run() -> tuple[dict[str, int], _Flaky]:
        server = _Flaky(broken=2)
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        async with listener:
            totals = await driver.post_batches(f"http://127.0.0.1:{port}/v1/items", "items", _items(30), 10)
        return totals, server

    totals, server = asyncio.run(run())
    assert totals["accepted"] == 30
    assert server.requests == 3 + 2  # three batches, two of them sent again
    assert sorted(b["items"][0]["item_id"] for b in server.bodies) == ["i00000", "i00010", "i00020"]  # type: ignore[index]


def test_idle_connections_are_dropped_before_the_services_drop_them() -> None:
    """The race above needs the client to keep an idle connection as long as the server does."""
    assert ServiceSettings().http_keep_alive_s > driver.KEEPALIVE_EXPIRY_S  # what the services run with
