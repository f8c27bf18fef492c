"""What the services' HTTP limits cost a request: the guarded protocol against uvicorn's own.

    .venv/bin/python benchmarks/http_protocol.py [--requests 50000] [--rounds 3]

Every service serves HTTP through ``scalerec_core.http_limits.GuardedHttpProtocol``, uvicorn's
httptools protocol with deadlines and size limits.  Here both protocols parse the same keep-alive
requests (a ranker GET with the headers a client sends) and run the same minimal ASGI app, on uvloop
as the services do, through an in-memory transport: no sockets, so what is timed is the protocol's
own work per request plus the app's few microseconds.  The floor is uvicorn's ``HttpToolsProtocol``;
rounds alternate the two; CPU time per request, best of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvloop
from scalerec_core.http_limits import HttpLimits
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

REQUEST = (
    b"GET /v1/recommendations?user_id=u00042&k=10 HTTP/1.1\r\n"
    b"Host: ranker.scalerec.svc:8000\r\n"
    b"User-Agent: python-httpx/0.28.1\r\n"
    b"Accept: */*\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\n"
    b"X-API-Key: sk_serve_0123456789abcdef0123456789abcdef\r\n"
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
)
BODY = b'{"items":[]}'


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})


class Transport(asyncio.Transport):
    """Takes what the protocol writes and counts it; always open, never full."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


async def per_request_us(factory: Any, requests: int) -> float:
    """CPU µs per request for ``requests`` keep-alive requests on one connection made by ``factory``."""
    config = Config(app, lifespan="off", log_level="warning")
    config.load()
    state = ServerState()
    protocol = factory(config=config, server_state=state, app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    for _ in range(200):  # warm up
        protocol.data_received(REQUEST)
        await asyncio.gather(*state.tasks)
    started = time.process_time()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        await asyncio.gather(*state.tasks)
    took = time.process_time() - started
    assert transport.written > requests * len(BODY)  # every request was answered
    protocol.connection_lost(None)
    return took / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    arms = {"uvicorn HttpToolsProtocol (floor)": HttpToolsProtocol, "GuardedHttpProtocol": HttpLimits().protocol()}
    best = dict.fromkeys(arms, float("inf"))
    for _ in range(args.rounds):
        for name, factory in arms.items():
            best[name] = min(best[name], uvloop.run(per_request_us(factory, args.requests)))
    floor = best["uvicorn HttpToolsProtocol (floor)"]
    print(f"HTTP protocol per request: {args.requests} keep-alive requests, best of {args.rounds} rounds, CPU time")
    print(f"{'protocol':36} {'µs/request':>10} {'ratio':>6}")
    for name, us in best.items():
        print(f"{name:36} {us:10.2f} {floor / us:6.2f}")
    print(f"limits cost {best['GuardedHttpProtocol'] - floor:+.2f} µs a request")


if __name__ == "__main__":
    main()
