"""HTTP/1.1 connections with limits on slow and oversized clients (uvicorn's httptools protocol, guarded).

uvicorn bounds neither how long a client may take to send a request nor how large its head may be:
a connection that sends half a request line and stops, or headers a byte a minute, is held for ever;
a 200 MB header is read into memory whole (both measured against the services). Behind an ingress
these never reach a pod, but a service reached in the cluster or a proxy that streams requests is
exposed, and a few thousand such connections use up a process's file descriptors. Here each
connection gets what nginx's ``client_header_timeout``, ``client_body_timeout`` and
``large_client_header_buffers`` give it:

- an idle connection that has not sent a request yet is closed after the keep-alive time, like one
  idle between requests (uvicorn closes only the latter);
- a request's line and headers must arrive within ``header_timeout_s`` of its first byte, else 408;
- a request's body within ``body_timeout_s`` of its head, else 408 (the app sees the client leave);
- a client that stops reading an answer (the socket's send buffer full) is cut off after
  ``body_timeout_s`` (nginx's ``send_timeout``), so the app's task and its answer are let go;
- a request line and headers over ``max_header_bytes`` are refused with 431 as soon as they pass it,
  not kept, and a URL over the 65,535 bytes uvicorn's URL parser takes with 414 (uvicorn's own answer
  to it was a bare 400 "Invalid HTTP request received.").

Refusals carry the services' error shape (``{"detail", "errors"}``), close the connection (what the
client still sends is read and dropped for a few seconds first, so that it sees the refusal rather
than a reset) and are
counted in ``scalerec_http_requests_refused_total{reason}`` (logged at debug only: they come in floods). The
checks run once per chunk the socket delivers and once per request head; timers are armed only while
a request is incomplete after a chunk, so a request that arrives whole (the usual GET) arms none.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from scalerec_core.telemetry import meter

log = logging.getLogger(__name__)

#: The longest URL uvicorn's parser (``httptools.parse_url``) accepts; longer ones failed as "invalid".
MAX_URL_BYTES = 65_535


@dataclass(frozen=True)
class HttpLimits:
    """How long and how large a client's requests may be (the services' HTTP_* settings)."""

    keep_alive_s: float = 5.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_header_bytes: int = 128 * 1024
    # Proxies trusted for the client's address (FORWARDED_ALLOW_IPS); empty: none, the peer is the client.
    forwarded_allow_ips: str = ""

    @classmethod
    def of(cls, settings: Any) -> HttpLimits:
        return cls(
            keep_alive_s=settings.http_keep_alive_s,
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            max_header_bytes=settings.http_max_header_bytes,
            forwarded_allow_ips=settings.forwarded_allow_ips,
        )

    def protocol(self) -> functools.partial[GuardedHttpProtocol]:
        """What uvicorn's ``http=`` takes: it builds one protocol per connection from it."""
        return functools.partial(GuardedHttpProtocol, limits=self)


@functools.cache
def _refused() -> Any:
    return meter("scalerec.http").create_counter(
        "scalerec.http.requests.refused",
        unit="{request}",
        description="Requests refused before the app saw them: too slow (408) or too large (414, 431), by reason",
    )


_REASONS = {400: "upgrade_with_body", 408: "timeout", 414: "url_too_long", 431: "headers_too_large"}


def _reason(status: int, field: str) -> str:
    """The refusal counter's ``reason``: headers_timeout, body_timeout, url_too_long, headers_too_large,
    upgrade_with_body."""
    return f"{field}_{_REASONS[status]}" if status == 408 else _REASONS[status]


# After a refusal the connection's sending side is shut and what the client still sends is read and
# dropped for up to this long or this much (nginx's lingering close), then the connection is closed:
# closed at once with its bytes unread, the kernel answers a reset, and a client still writing its
# request gets a write error instead of the refusal.
LINGER_S = 5.0
LINGER_BYTES = 8 << 20


def _refusal_body(message: str, field: str) -> bytes:
    """The services' error shape (scalerec_core.http.error_response) for one field."""
    return json.dumps({"detail": message, "errors": [{"field": field, "message": message}]}).encode()


def _refusal(status: int, message: str, field: str) -> bytes:
    """A whole HTTP answer refusing a request, written straight to the connection."""
    body = _refusal_body(message, field)
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


_IDLE, _HEAD, _BODY = 0, 1, 2  # where a connection is in its current request


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`HttpLimits` enforced (see the module's docstring).

    Time during which uvicorn itself has stopped reading the socket (a pipelined request waiting for the
    one before it, a body the app has not read yet past 64 KiB) does not count against the client.
    """

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._phase = _IDLE
        self._head_bytes = 0  # of a request head still arriving: its part parsed in its first chunk, then all since
        self._chunk = 0  # the size of the chunk being parsed
        self._began = False  # whether a request began in the chunk being parsed
        self._lingering: int | None = None  # bytes dropped since a refusal, while the client may still send
        self._surely_small = min(limits.max_header_bytes, MAX_URL_BYTES)  # a head no larger needs no check
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_phase = _IDLE
        self._stalled: asyncio.TimerHandle | None = None  # armed while the client is not reading our answer
        self._unsent = 0  # bytes waiting in the send buffer when that timer was armed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a request is idle like one between requests (uvicorn arms this
        # only after a response): a pooling proxy's idle connection is closed after the same time.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        super().connection_lost(exc)

    # Writing: a client that takes nothing of an answer for body_timeout_s is cut off.
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stalled is None:
            self._unsent = self.transport.get_write_buffer_size()
            self._stalled = self.loop.call_later(self.limits.body_timeout_s, self._not_read)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _not_read(self) -> None:
        self._stalled = None
        unsent = self.transport.get_write_buffer_size()
        if unsent < self._unsent:  # it reads, if slowly (nginx's send_timeout: between two writes)
            self._unsent = unsent
            self._stalled = self.loop.call_later(self.limits.body_timeout_s, self._not_read)
            return
        self._count("response_not_read")
        self.transport.abort()  # close() would wait for the buffer to drain, which is what is not happening

    # Parser callbacks: where the request is.
    # (The checks on the usual request's path are written out, not called: each call costs it ~0.1 µs.)
    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        if self._deadline is not None:  # the previous request's, if it ended in this chunk
            self._cancel_deadline()
        self._phase = _HEAD
        self._began = True

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        # A head that began in this chunk is no larger than the chunk: only a head that came in several
        # chunks, or in one larger than the limit, has its parts added up (never the usual request).
        if (self._began and self._chunk <= self._surely_small) or not self._over_limits(self._parsed_head_bytes()):
            if self.parser.should_upgrade():
                self._upgrade_declined()
                return
            HttpToolsProtocol.on_headers_complete(self)
            return
        # The whole head arrived in the chunk that passed the limit: answer through a cycle of its own,
        # as uvicorn answers 503 over its concurrency limit, so the parser's state stays consistent
        # (and a pipelined refusal waits for the answer before it, as any pipelined request does).
        self._refuse_in_cycle(*self._too_large())

    def _refuse_in_cycle(self, status: int, message: str, field: str) -> None:
        self._count(_reason(status, field))
        app = self.app
        self.app = functools.partial(_send_refusal, status, message, field)
        self.url = b"/"  # what uvicorn parses next: the refusal needs no path, and a long URL would not parse
        try:
            HttpToolsProtocol.on_headers_complete(self)
        finally:
            self.app = app

    def _upgrade_declined(self) -> None:
        """A request that asks to switch protocols (``Connection: upgrade``), which no service does.

        The parser treats what follows its head as the new protocol's bytes: uvicorn drops the rest of the
        chunk and parses the next one as a new request, so a body would be read as requests of its own and
        a pipelined request lost. So the request is answered as plain HTTP (``curl --http2`` asks for h2c
        this way) only when it has no body, and the connection closed after it; one with a body is refused.
        """
        if any(
            name == b"transfer-encoding" or (name == b"content-length" and value.strip().lstrip(b"0") != b"")
            for name, value in self.headers
        ):
            message = (
                "this service speaks plain HTTP only, and a request that asks to switch protocols (Connection: "
                "upgrade, or CONNECT) cannot carry a body here: send it as a plain request"
            )
            if self._answering():  # behind an answer still being written: in turn, after it
                self._refuse_in_cycle(400, message, "headers")
                return
            # Written at once, then what the client still sends is read and dropped (the lingering close):
            # closed with its body unread, the kernel would answer a reset and the client never see the 400.
            self._phase = _HEAD
            self._refuse(400, message, "headers")
            self._phase = _IDLE
            return
        HttpToolsProtocol.on_headers_complete(self)
        self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        if self._lingering is None:  # refused in its head (an upgrade with a body): no cycle to complete
            HttpToolsProtocol.on_message_complete(self)
        self._phase = _IDLE

    def on_body(self, body: bytes) -> None:
        if self._lingering is None:
            HttpToolsProtocol.on_body(self, body)

    def _unsupported_upgrade_warning(self) -> None:
        # No service speaks WebSocket or h2c (uvicorn runs with ws="none"): see _upgrade_declined. uvicorn
        # logs two warnings for each such request, which any client could send in a flood.
        log.debug("upgrade to %r not supported", self._get_upgrade())

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:  # refused: what the client still sends is dropped
            self._lingering += len(data)
            if self._lingering > LINGER_BYTES:
                self.transport.abort()
            return
        self._chunk = len(data)
        self._began = False
        HttpToolsProtocol.data_received(self, data)
        phase = self._phase
        if phase == _IDLE:  # the usual case: every request in this chunk came whole
            if self._began or self.timeout_keep_alive_task is not None or self._answering():
                if self._deadline is not None:
                    self._cancel_deadline()
            elif self._deadline is None and not self.transport.is_closing():
                # Bytes that began no request (llhttp skips CR and LF before a request line) cancelled the
                # idle timer: the connection stays idle-timed, from the first such bytes, not from each.
                self._deadline = self.loop.call_later(self._allowed(_IDLE), self._timed_out)
                self._deadline_phase = _IDLE
            return
        if self.transport.is_closing():
            return
        if phase == _HEAD:  # a request's head is still arriving after this chunk
            if not self._began:
                self._head_bytes += len(data)
            else:  # it began in this chunk, maybe after the end of the request before it: what is parsed of
                # it (a header still being read is not, so a head may pass the limit by up to one chunk
                # before this check refuses it; on_headers_complete's is exact)
                self._head_bytes = self._parsed_head_bytes()
            if self._over_limits(self._head_bytes):
                self._head_too_large()
                return
        if self._deadline is None or self._deadline_phase != phase:
            self._cancel_deadline()
            self._deadline = self.loop.call_later(self._allowed(phase), self._timed_out)
            self._deadline_phase = phase

    def _allowed(self, phase: int) -> float:
        """Seconds a connection may stay in ``phase`` (idle after bytes that began no request, head, body)."""
        if phase == _HEAD:
            return self.limits.header_timeout_s
        return self.limits.body_timeout_s if phase == _BODY else self.timeout_keep_alive

    def _parsed_head_bytes(self) -> int:
        """The size of the request line and headers parsed so far (a header still being read aside)."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _over_limits(self, head_bytes: int) -> bool:
        return head_bytes > self.limits.max_header_bytes or len(self.url) > MAX_URL_BYTES

    def _too_large(self) -> tuple[int, str, str]:
        limit = min(MAX_URL_BYTES, self.limits.max_header_bytes)
        if len(self.url) > limit:
            message = f"the URL is over the limit of {limit} bytes: send fewer or shorter query parameters"
            return 414, message, "url"
        limit = self.limits.max_header_bytes
        return 431, f"the request line and headers are over the limit of {limit} bytes", "headers"

    def _head_too_large(self) -> None:
        if self._answering():
            # The answer to the request before is being written: let it finish, read no more, close after it.
            if self.cycle.keep_alive:  # counted once, however many chunks still come in
                status, _, field = self._too_large()
                self._count(_reason(status, field))
                self.cycle.keep_alive = False
            self.flow.pause_reading()
            self._cancel_deadline()
            return
        self._refuse(*self._too_large())

    def _answering(self) -> bool:
        """Whether an answer to an earlier request on this connection is still to be written."""
        cycle = self.cycle
        return bool(self.pipeline) or (cycle is not None and not cycle.response_complete)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused or self.pipeline:
            # uvicorn is not reading (the client may have sent it all), or this request waits behind the
            # one before it, which may have resumed reading for its own sake: not the client's delay.
            self._deadline = self.loop.call_later(self._allowed(self._deadline_phase), self._timed_out)
            return
        if self._phase == _IDLE:  # idle since bytes that were no request
            if not self._answering():
                self.transport.close()
        elif self._phase == _HEAD:
            if self._answering():  # the previous request's answer is still being written: close once it is
                self._count(_reason(408, "headers"))
                self.cycle.keep_alive = False
                return
            self._refuse(
                408, f"the request's headers did not arrive within {self.limits.header_timeout_s:g} s", "headers"
            )
        elif self._phase == _BODY:
            self._refuse(408, f"the request's body did not arrive within {self.limits.body_timeout_s:g} s", "body")

    def _count(self, reason: str) -> None:
        _refused().add(1, {"reason": reason})
        log.debug("%s: refused (%s), connection closed", self.client, reason)

    def _refuse(self, status: int, message: str, field: str) -> None:
        """Answer ``status`` where no answer to this request has begun, and close the connection.

        No request waits behind the running one here (``_timed_out`` waits while one does): in a body,
        ``self.cycle`` is this request's, whose app may have answered already; in a head, it is the
        previous request's, answered in full (see ``_answering``).
        """
        self._count(_reason(status, field))
        self._unset_keepalive_if_required()
        self._cancel_deadline()
        cycle = self.cycle
        answer = not self.pipeline and (cycle is None or not cycle.response_started or self._phase == _HEAD)
        if answer:
            self.transport.write(_refusal(status, message, field))
        if cycle is not None and not cycle.response_complete:
            # What the app reads next is the client leaving; whatever it answers is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        if not answer or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()  # the answer, then the end of what this side sends
        self._lingering = 0
        self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)


async def _send_refusal(status: int, message: str, field: str, scope: Any, receive: Any, send: Any) -> None:
    body = _refusal_body(message, field)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
