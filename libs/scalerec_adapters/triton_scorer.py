"""Scoring on NVIDIA Triton over gRPC, and the fallback chain the ranker layers on top.

``TritonScorer`` talks to a Triton started with ``--model-control-mode=explicit``
(explicit load and unload calls, never polling: Triton's docs advise against POLL in
production, where a version folder still being written could be loaded half-copied).  Why each piece:

* **Explicit versions.**  ``load(model, v)`` (re)loads the model with a version policy of
  *what is already loaded* plus ``v`` (a config override on ``load_model``), so loading
  a candidate never drops the champion that is taking traffic; ``unload(model, v)``
  reloads with ``v`` removed (or unloads the model when it was the last version).
  Triton keeps serving unchanged versions while a reload is in progress, which is
  what makes the hot swap lossless.
* **Warm-up** with one request after a load, so the first user request does not pay
  for lazy allocations (and a model that cannot run is caught at load time).
* **Per-request deadline** (``client_timeout``), **one retry** on transient errors
  (UNAVAILABLE, RESOURCE_EXHAUSTED) within that deadline, and a **circuit breaker**
  that fails fast while Triton is down, so the ranker falls back at once instead of
  waiting out a timeout on every request.  Every failure reaches the caller as
  ``ScorerUnavailable`` with the model, version and Triton's message.

* **Every replica.**  The address may be a DNS name that resolves to every Triton pod (a headless
  Service) or a list of IP addresses: requests are balanced over all of them (gRPC's ``round_robin``,
  per request, where a ClusterIP would pin each client's one connection to one pod), and the client
  is re-made every ``refresh`` seconds so replicas added since are found.  The evaluator controls
  each replica on its own (``scalerec_evaluator.serving``).

``FallbackScorer(primary, fallback)`` tries the primary and answers from the fallback on
``ScorerUnavailable``; which backend answered is reported by ``infer_with_backend`` and
by the ``last_backend()`` context variable, so the ranker can flag degraded responses.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scalerec_adapters.resilience import CircuitBreaker, CircuitOpen, retry_async
from scalerec_adapters.scoring import Scorer, ScorerUnavailable

log = logging.getLogger(__name__)

# gRPC status codes (as tritonclient reports them) worth one immediate retry: the server
# is restarting, a version is between unload and load, or the queue is momentarily full.
_TRANSIENT = {"StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED"}
# Retried too: with several replicas (round_robin), NOT_FOUND may come from one that is new or has just
# restarted and has not been given the model yet (the evaluator's repair does, within TRITON_REPAIR_S),
# while the retry goes to the next replica. Without the retry, one such answer sent every request of the
# ranker worker to its in-process fallback until a reload found the model on whichever replica it asked.
_RETRIED = _TRANSIENT | {"StatusCode.NOT_FOUND"}
# Codes that say nothing about the server's health (caller's input, a model that is not
# loaded): they raise ScorerUnavailable but do not open the breaker for every model.
_NOT_SERVER_FAILURES = {"StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"}


class ModelNotLoaded(ScorerUnavailable):
    """Triton answered but does not have this model version loaded (e.g. it restarted:
    with explicit model control a fresh server has nothing loaded)."""


def _status(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    try:
        return str(status()) if callable(status) else ""
    except Exception:
        return ""


def _counts_against_server(exc: BaseException) -> bool:
    """Whether an error says the server is unhealthy (cancellation and bad input do not)."""
    return not isinstance(exc, asyncio.CancelledError) and _status(exc) not in _NOT_SERVER_FAILURES


def _ip_family(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host.strip("[]")).version
    except ValueError:
        return None


def grpc_target(url: str) -> str:
    """The gRPC target for ``host:port`` or ``ip:port,ip:port``: one name as it is (gRPC resolves it and,
    with round_robin, uses every address it gets); a list as gRPC's ``ipv4:``/``ipv6:`` address list."""
    parts = [p.strip() for p in url.split(",") if p.strip()]
    if len(parts) == 1:
        return parts[0]
    families = {_ip_family(p.rpartition(":")[0]) for p in parts}
    if families == {4}:
        return "ipv4:" + ",".join(parts)
    if families == {6}:
        return "ipv6:" + ",".join(parts)
    raise ValueError(
        f"Triton at {url!r}: several addresses must all be IPv4 or all IPv6 literals; "
        "for several pods give one DNS name that resolves to each (a headless Service)"
    )


def _as_float(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"TritonScorer option {name}={value!r} is not a number") from None


class TritonScorer(Scorer):
    """Triton over gRPC (``tritonclient.grpc.aio``).

    Options (also accepted as strings, from the ``triton://host:8001?timeout=0.5`` URL):
    ``timeout`` seconds per request (default 1.0), ``retries`` extra attempts on transient
    errors (1), ``failure_threshold`` consecutive failures that open the breaker (5),
    ``reset_timeout`` seconds before a half-open probe (5.0), ``load_timeout`` seconds for
    load/unload/warm-up (120), ``warmup`` (true), ``control`` (true), ``refresh`` seconds after
    which the channel is re-made, its name resolved again (60; 0: never).

    ``control=false`` makes a follower: ``load`` only checks that Triton already serves the
    version (and warms it up), ``unload`` does nothing.  Triton's model control has one owner
    (the evaluator, which loads what the champion and the running experiment need); ranker
    replicas follow, so no replica can unload a version that another one still serves.

    ``repository`` is the model repository as this process sees it; it is used only to
    check that a version exists before asking Triton to load it (clearer error), and may
    be a different mount than Triton's.
    """

    name = "triton"

    def __init__(self, url: str, repository: Path | None = None, **options: Any) -> None:
        self.url = url
        self.repository = Path(repository) if repository is not None else None
        known = {
            "timeout",
            "retries",
            "failure_threshold",
            "reset_timeout",
            "load_timeout",
            "warmup",
            "control",
            "refresh",
        }
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"unknown TritonScorer option(s) {sorted(unknown)}; known: {sorted(known)}")
        self.timeout = _as_float(options.get("timeout", 1.0), "timeout")
        self.retries = int(options.get("retries", 1))
        self.load_timeout = _as_float(options.get("load_timeout", 120.0), "load_timeout")
        self.warmup = str(options.get("warmup", True)).lower() not in {"0", "false", "no"}
        self.control = str(options.get("control", True)).lower() not in {"0", "false", "no"}
        self.refresh = _as_float(options.get("refresh", 60.0), "refresh")
        self.target = grpc_target(url)  # refused here, at start-up, when it cannot be dialled
        self.breaker = CircuitBreaker(
            failure_threshold=int(options.get("failure_threshold", 5)),
            reset_timeout=_as_float(options.get("reset_timeout", 5.0), "reset_timeout"),
        )
        self._client: Any = None
        self._client_made = 0.0
        self._retired: dict[Any, asyncio.Task[None]] = {}  # old clients, each closed by its task
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ plumbing

    def _get_client(self) -> Any:
        # Created lazily: a grpc.aio channel belongs to the event loop it is first used on,
        # and settings objects build scorers before the loop runs.
        now = time.monotonic()
        if self._client is not None and self.refresh > 0 and now - self._client_made > self.refresh:
            # gRPC resolves the name again only when a connection fails: replicas added since would get
            # nothing. A new channel resolves it now; the old one is closed once its calls are done.
            self._retire(self._client)
            self._client = None
        if self._client is None:
            import tritonclient.grpc.aio as grpcclient
            from tritonclient.grpc import KeepAliveOptions
            from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE

            _instrument_grpc_client()  # every call carries the caller's trace context to Triton
            keepalive = KeepAliveOptions()
            options = [  # tritonclient's own defaults, plus balancing per request over every address
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
                ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
                ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
                ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
                ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
                ("grpc.lb_policy_name", "round_robin"),
            ]
            self._client = grpcclient.InferenceServerClient(self.target, channel_args=options)
            self._client_made = now
        return self._client

    def _retire(self, client: Any) -> None:
        async def close_later() -> None:
            await asyncio.sleep(max(self.timeout, self.load_timeout) + 1.0)
            self._retired.pop(client, None)
            await client.close()

        self._retired[client] = asyncio.get_running_loop().create_task(close_later())

    def _lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    async def loaded_versions(self, model: str) -> set[int]:
        """Versions of ``model`` that Triton reports READY (from the repository index)."""
        index = await self._get_client().get_model_repository_index(as_json=True, client_timeout=self.load_timeout)
        return {
            int(entry["version"])
            for entry in index.get("models", [])
            if entry.get("name") == model and entry.get("state") == "READY" and entry.get("version")
        }

    async def _load_with_versions(self, model: str, versions: set[int]) -> None:
        """Reload ``model`` serving exactly ``versions`` (config override keeps everything else)."""
        client = self._get_client()
        current = await client.get_model_config(model, as_json=True, client_timeout=self.load_timeout)
        config = current.get("config", current)
        config["version_policy"] = {"specific": {"versions": sorted(versions)}}
        await client.load_model(model, config=json.dumps(config), client_timeout=self.load_timeout)

    async def _warm_up(self, model: str, version: int) -> None:
        """One batch-1 request of zeros (dynamic dims = 1) with a generous deadline."""
        import tritonclient.grpc.aio as grpcclient
        from tritonclient.utils import triton_to_np_dtype

        metadata = await self._get_client().get_model_metadata(
            model, str(version), as_json=True, client_timeout=self.load_timeout
        )
        inputs = {}
        for tensor in metadata["inputs"]:
            shape = [max(1, int(d)) for d in tensor["shape"]]
            inputs[tensor["name"]] = np.zeros(shape, dtype=triton_to_np_dtype(tensor["datatype"]))
        outputs = [grpcclient.InferRequestedOutput(t["name"]) for t in metadata["outputs"]]
        await self._get_client().infer(
            model,
            self._infer_inputs(inputs),
            model_version=str(version),
            outputs=outputs,
            client_timeout=self.load_timeout,
        )

    @staticmethod
    def _infer_inputs(inputs: Mapping[str, np.ndarray]) -> list[Any]:
        import tritonclient.grpc.aio as grpcclient
        from tritonclient.utils import np_to_triton_dtype

        out = []
        for name, value in inputs.items():
            array = np.ascontiguousarray(value)
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            out.append(tensor)
        return out

    # ------------------------------------------------------------------ Scorer

    async def load(self, model: str, version: int) -> None:
        version = int(version)
        if self.repository is not None and not (self.repository / model / str(version)).is_dir():
            raise ScorerUnavailable(f"model {model!r} version {version}: not in repository {self.repository}")
        async with self._lock(model):
            try:
                loaded = await self.loaded_versions(model)
                if version not in loaded and not self.control:
                    raise ScorerUnavailable(
                        f"model {model!r} version {version}: not loaded on Triton at {self.url} yet "
                        "(its controller, the evaluator, loads what the champion and experiments need)"
                    )
                if version not in loaded:
                    if loaded:
                        await self._load_with_versions(model, loaded | {version})
                    else:
                        # First load: the repository's config.pbtxt (generated from the ONNX schema).
                        await self._get_client().load_model(model, client_timeout=self.load_timeout)
                        now_loaded = await self.loaded_versions(model)
                        if version not in now_loaded:  # the config's policy lacks it: add it, drop nothing
                            await self._load_with_versions(model, now_loaded | {version})
                ready = await self._get_client().is_model_ready(model, str(version), client_timeout=self.load_timeout)
                if not ready:
                    raise ScorerUnavailable(f"model {model!r} version {version}: Triton loaded it but it is not ready")
                if self.warmup:
                    await self._warm_up(model, version)
            except ScorerUnavailable:
                raise
            except Exception as exc:
                raise ScorerUnavailable(
                    f"model {model!r} version {version}: Triton at {self.url} could not load it: {exc}"
                ) from exc
        log.info("triton %s: loaded %s version %s", self.url, model, version)

    async def unload(self, model: str, version: int) -> None:
        version = int(version)
        if not self.control:
            return  # a follower never unloads: another replica may still serve the version
        async with self._lock(model):
            try:
                loaded = await self.loaded_versions(model)
                remaining = loaded - {version}
                if version not in loaded:
                    return
                if remaining:
                    await self._load_with_versions(model, remaining)
                else:
                    await self._get_client().unload_model(model, client_timeout=self.load_timeout)
            except Exception as exc:
                raise ScorerUnavailable(
                    f"model {model!r} version {version}: Triton at {self.url} could not unload it: {exc}"
                ) from exc
        log.info("triton %s: unloaded %s version %s", self.url, model, version)

    async def infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> dict[str, np.ndarray]:
        import tritonclient.grpc.aio as grpcclient

        client = self._get_client()
        request_inputs = self._infer_inputs(inputs)
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
        deadline = time.monotonic() + self.timeout

        async def attempt() -> Any:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"deadline of {self.timeout}s spent before the call")
            return await client.infer(
                model, request_inputs, model_version=str(version), outputs=requested, client_timeout=remaining
            )

        async def with_retry() -> Any:
            return await retry_async(
                attempt,
                attempts=1 + self.retries,
                retry_on=lambda exc: _status(exc) in _RETRIED,
                deadline=deadline,
            )

        try:
            result = await self.breaker.call(with_retry, is_failure=_counts_against_server)
        except CircuitOpen as exc:
            raise ScorerUnavailable(f"model {model!r} version {version}: Triton at {self.url}: {exc}") from exc
        except Exception as exc:
            reason = _status(exc) or type(exc).__name__
            error = ModelNotLoaded if reason == "StatusCode.NOT_FOUND" else ScorerUnavailable
            raise error(f"model {model!r} version {version}: Triton at {self.url} failed ({reason}): {exc}") from exc
        return {name: result.as_numpy(name) for name in outputs}

    async def healthy(self) -> bool:
        try:
            return bool(await self._get_client().is_server_ready(client_timeout=min(self.timeout, 2.0)))
        except Exception:
            return False

    async def statistics(self, model: str, version: int | None = None) -> dict[str, Any]:
        """Triton's statistics extension for ``model`` (batch-size histogram, queue and compute times)."""
        return await self._get_client().get_inference_statistics(
            model, "" if version is None else str(version), as_json=True, client_timeout=self.load_timeout
        )

    async def close(self) -> None:
        for client, task in list(self._retired.items()):
            task.cancel()
            await client.close()
        self._retired.clear()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


# ---------------------------------------------------------------------- fallback chain

_last_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("scalerec_scoring_backend", default=None)


def last_backend() -> str | None:
    """Name of the backend that answered the last ``FallbackScorer.infer`` in this task/context.

    A context variable, not an attribute, because one scorer serves many concurrent
    requests: each asyncio task sees its own value.  (A call made inside a *child* task
    does not propagate back; use ``infer_with_backend`` there.)
    """
    return _last_backend.get()


class FallbackScorer(Scorer):
    """Try ``primary``; on ``ScorerUnavailable`` answer from ``fallback``. Chains nest:
    ``FallbackScorer(TritonScorer(...), OnnxRuntimeScorer(...))``.

    A primary that failed to load a model (Triton down at start-up), or that lost it
    (Triton restarted: explicit model control starts empty), is re-loaded in the
    background at most every ``reload_interval`` seconds, so traffic returns to the
    primary once it is back without anyone calling ``load`` again.
    """

    def __init__(self, primary: Scorer, fallback: Scorer, *, reload_interval: float = 10.0) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = f"{primary.name}>{fallback.name}"
        self.reload_interval = reload_interval
        self._pending: dict[tuple[str, int], float] = {}  # (model, version) -> last load attempt
        self._loaded: set[tuple[str, int]] = set()  # loaded through this scorer: worth re-loading
        self._reloads: set[asyncio.Task[None]] = set()

    async def load(self, model: str, version: int) -> None:
        await self.fallback.load(model, version)  # must succeed: it is the answer of last resort
        self._loaded.add((model, int(version)))
        try:
            await self.primary.load(model, version)
            self._pending.pop((model, int(version)), None)
        except ScorerUnavailable as exc:
            log.warning(
                "%s: primary %s cannot load %s v%s, serving from %s: %s",
                self.name,
                self.primary.name,
                model,
                version,
                self.fallback.name,
                exc,
            )
            self._pending[(model, int(version))] = time.monotonic()

    async def unload(self, model: str, version: int) -> None:
        self._pending.pop((model, int(version)), None)
        self._loaded.discard((model, int(version)))
        try:
            await self.primary.unload(model, version)
        except ScorerUnavailable as exc:
            log.warning("%s: primary could not unload %s v%s: %s", self.name, model, version, exc)
        await self.fallback.unload(model, version)

    def _maybe_reload_primary(self, model: str, version: int) -> None:
        key = (model, int(version))
        last = self._pending.get(key)
        if last is None or time.monotonic() - last < self.reload_interval:
            return
        self._pending[key] = time.monotonic()

        async def reload() -> None:
            try:
                await self.primary.load(model, version)
                self._pending.pop(key, None)
                log.info("%s: primary %s serves %s v%s again", self.name, self.primary.name, model, version)
            except ScorerUnavailable as exc:
                log.info("%s: primary still cannot load %s v%s: %s", self.name, model, version, exc)

        task = asyncio.get_running_loop().create_task(reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def infer_with_backend(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> tuple[dict[str, np.ndarray], str]:
        """Scores plus the name of the backend that produced them."""
        if (model, int(version)) not in self._pending:
            try:
                result = await self.primary.infer(model, version, inputs, outputs)
                backend = last_backend() if isinstance(self.primary, FallbackScorer) else self.primary.name
                return result, backend or self.primary.name
            except ModelNotLoaded as exc:
                # The primary came back without our model (restart): re-load it in the background.
                if (model, int(version)) in self._loaded:
                    log.warning("%s: primary lost %s v%s, re-loading it: %s", self.name, model, version, exc)
                    self._pending[(model, int(version))] = -math.inf
                    self._maybe_reload_primary(model, version)
            except ScorerUnavailable as exc:
                log.debug("%s: primary unavailable, falling back: %s", self.name, exc)
        else:
            self._maybe_reload_primary(model, version)
        result = await self.fallback.infer(model, version, inputs, outputs)
        backend = last_backend() if isinstance(self.fallback, FallbackScorer) else self.fallback.name
        return result, backend or self.fallback.name

    async def infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> dict[str, np.ndarray]:
        result, backend = await self.infer_with_backend(model, version, inputs, outputs)
        _last_backend.set(backend)
        return result

    async def healthy(self) -> bool:
        return await self.primary.healthy() or await self.fallback.healthy()

    async def close(self) -> None:
        for task in list(self._reloads):
            task.cancel()
        await self.primary.close()
        await self.fallback.close()


def _instrument_grpc_client() -> None:
    """The gRPC aio client: client spans and ``traceparent`` in every call's metadata.

    Here, not in scalerec_core.telemetry: only images with the Triton client carry gRPC and its
    instrumentation (the ``triton`` extra). Call before making a channel; safe to call more than once.
    """
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient

    instrumentor = GrpcAioInstrumentorClient()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()
