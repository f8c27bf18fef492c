"""Structured logging that carries the current trace id, so a log line can be joined to its trace."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sys
from typing import Any

from opentelemetry import trace

# Key of the pseudonyms in log lines (LOG_ID_KEY); a random one per process until configure_logging sets it.
_id_key: bytes = secrets.token_bytes(32)


def user_ref(user_id: str, key: str | None = None) -> str:
    """How a log line names a user: a keyed hash (HMAC-SHA256, 16 hex), never the id in clear.

    With the same LOG_ID_KEY every service writes the same reference for a user, so an operator who
    knows an id can find its lines (``user_ref(id, key)``) while the logs alone do not reveal it.
    """
    return _ref("u:", user_id.encode("utf-8", "surrogatepass"), key)


def key_ref(key_bytes: bytes, key: str | None = None) -> str:
    """How a log line or error names a storage or bus key (an HBase row key, a Kafka message key).

    Such keys embed user ids (``<salt>|<user>|...``), so they get the same keyed hash as
    :func:`user_ref`: with LOG_ID_KEY an operator who builds the key from an id can find its lines.
    """
    return _ref("k:", key_bytes, key)


def _ref(kind: str, data: bytes, key: str | None) -> str:
    secret = _id_key if key is None else key.encode()
    return kind + hmac.new(secret, data, hashlib.sha256).hexdigest()[:16]


_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class _TraceContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
        record.span_id = format(ctx.span_id, "016x") if ctx.is_valid else ""
        return True


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
            "trace_id": getattr(record, "trace_id", ""),
            "span_id": getattr(record, "span_id", ""),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in out and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(service: str, level: str = "INFO", fmt: str = "text", id_key: str = "") -> None:
    """Send every logger's records to stderr, with trace ids attached; ``id_key`` keys :func:`user_ref`."""
    global _id_key
    if id_key:
        _id_key = id_key.encode()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_TraceContextFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter(service))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s [trace=%(trace_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that narrate their internals at INFO (the ONNX exporter logs every rewrite pass; faiss's
    # loader logs a ModuleNotFoundError for each CPU-specific build it tries before the one it loads).
    for noisy in ("uvicorn.access", "aiokafka", "kafka", "onnxscript", "onnx_ir", "torch", "httpx", "faiss.loader"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
