"""Trace context reaches Triton: the gRPC client instrumentation puts ``traceparent`` in the metadata
of every call the Triton scorer makes (read here by a gRPC server that records what it receives)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from opentelemetry import trace
from scalerec_adapters.triton_scorer import TritonScorer
from scalerec_core.settings import ServiceSettings
from scalerec_core.telemetry import setup_telemetry, tracer


class _Recorder(grpc.GenericRpcHandler):
    """Answers every method UNIMPLEMENTED after noting the metadata it came with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        self.calls.append((handler_call_details.method, dict(handler_call_details.invocation_metadata)))
        return None


async def _call_through_scorer() -> tuple[list[tuple[str, dict[str, str]]], int]:
    recorder = _Recorder()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((recorder,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    scorer = TritonScorer(f"127.0.0.1:{port}", timeout=2)
    try:
        with tracer("test").start_as_current_span("request") as span:
            assert await scorer.healthy() is False  # UNIMPLEMENTED: not a Triton, but it saw the call
            trace_id = span.get_span_context().trace_id
    finally:
        await scorer.close()
        await server.stop(None)
    return recorder.calls, trace_id


def test_triton_calls_carry_the_callers_trace_context() -> None:
    setup_telemetry(ServiceSettings())  # a real tracer provider (no-op if one is set up already)
    calls, trace_id = asyncio.run(_call_through_scorer())
    assert calls, "the scorer made no call"
    method, metadata = calls[0]
    assert method == "/inference.GRPCInferenceService/ServerReady"
    assert "traceparent" in metadata
    assert metadata["traceparent"].split("-")[1] == format(trace_id, "032x")
    assert trace.get_current_span() is trace.INVALID_SPAN
