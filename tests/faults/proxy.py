"""A TCP fault proxy for the latency-fault tests: pass, slow, or black-holed, switchable at run time.

It sits between a client and a real server (Kafka, HBase Thrift, Memcached, Triton) and forwards
bytes both ways.  Modes, applied to every open connection at its next chunk and to new ones:

* ``pass``: forward as is;
* ``delay``: hold every chunk ``delay_s`` before forwarding it (latency in both directions; a
  stream's chunks stay in order, so a busy connection also loses throughput, as on a slow link);
* ``blackhole``: accept connections, but forward nothing and answer nothing (a partitioned network
  or a hung server: the client waits for its own timeout, no error reaches it).  Bytes are held,
  not dropped, as TCP would retransmit them: when the fault ends, a connection the client kept
  carries on intact, and a connection accepted meanwhile is connected upstream then.

It runs its own event loop in a thread, so the tests drive it from plain code; ``stats`` counts
connections and the chunks delayed or held, so a test can check the fault was really in the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Literal

from scalerec_core.service import free_port

Mode = Literal["pass", "delay", "blackhole"]


@dataclass
class ProxyStats:
    connections: int = 0
    refused_upstream: int = 0
    held_chunks: int = 0
    delayed_chunks: int = 0


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    host: str = "127.0.0.1"
    port: int = 0
    mode: Mode = "pass"
    delay_s: float = 0.0
    stats: ProxyStats = field(default_factory=ProxyStats)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.AbstractServer | None = None
    _thread: threading.Thread | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        self.port = self.port or free_port(self.host)
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
            )
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"fault proxy on {self.address} did not start")
        return self

    def set(self, mode: Mode, delay_s: float = 0.0) -> None:
        """Switch every connection (open or new) to ``mode``."""
        self.delay_s = delay_s
        self.mode = mode

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the data path

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        self._writers.add(writer)
        try:
            await self._while_black_holed()  # a hung server: connected upstream only once it is back
            try:
                up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            except OSError:
                self.stats.refused_upstream += 1
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _while_black_holed(self) -> None:
        while self.mode == "blackhole":
            await asyncio.sleep(0.05)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                if self.mode == "blackhole":
                    self.stats.held_chunks += 1
                    await self._while_black_holed()
                if self.mode == "delay" and self.delay_s > 0:
                    self.stats.delayed_chunks += 1
                    await asyncio.sleep(self.delay_s)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
