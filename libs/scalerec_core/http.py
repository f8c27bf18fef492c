"""What every ScaleRec HTTP service shares: health endpoints, error shapes, auth, body and rate limits.

Errors always reach the caller as ``{"detail": ..., "errors": [{"field": ..., "message": ...}]}``
with a 4xx that names what was wrong — never a 500 for bad input.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import _get_param_aliases, _get_param_model, get_cached_model_fields
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute, _effective_route_context_var
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scalerec_core.auth import PRINCIPAL, KeyRing, document_keys

if TYPE_CHECKING:
    from scalerec_core.settings import ServiceSettings

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]
READY_CACHE_S = 1.5
READY_CHECK_TIMEOUT_S = 2.0  # per dependency check; they run side by side, so also the /readyz answer's bound
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def field_path(loc: Sequence[Any]) -> str:
    """``("body", "events", 3, "timestamp")`` → ``events[3].timestamp``."""
    out = ""
    for part in loc:
        if part in ("body", "query", "path", "header"):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


# Most errors one answer lists (one element of a batch, or one request): an object of 400,000 unknown
# fields made as many errors, a 42 MB answer and seconds of the event loop; the rest is counted.
MAX_ERRORS_LISTED = 20


def validation_errors(
    exc: ValidationError | RequestValidationError, prefix: str = "", limit: int = MAX_ERRORS_LISTED
) -> list[dict[str, str]]:
    """The first ``limit`` errors as ``{"field", "message"}`` (``field`` under ``prefix``), then one that
    counts the rest."""
    raw: Sequence[Any]
    if isinstance(exc, ValidationError):
        raw = exc.errors(include_url=False, include_context=False, include_input=False)
        total = exc.error_count()
    else:
        raw = exc.errors()
        total = len(raw)
    errors = []
    for err in raw[:limit]:
        path = field_path(err.get("loc", ()))
        if prefix:
            path = f"{prefix}.{path}" if path != "body" else prefix
        msg = str(err.get("msg", "invalid"))
        # pydantic prefixes errors raised in validators with "Value error, ".
        msg = msg.removeprefix("Value error, ")
        errors.append({"field": path, "message": msg})
    if total > limit:
        errors.append({"field": prefix or "body", "message": f"and {total - limit} more errors (not listed)"})
    return errors


def _digits(value: object) -> object:
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("a whole number written in digits (10, not 1e1, 10.0, +10 or 1_0)")
    return value


#: An ``int`` in a path or query written in digits only: pydantic's lax ``int`` read "10.0", " 10", "+10" and
#: "1_0" as numbers (``k=5_0`` answered fifty items). ``Annotated[int, Digits, Query(ge=1)]``.
Digits = BeforeValidator(_digits)


QueryModel = TypeVar("QueryModel", bound=BaseModel)


@functools.cache
def _query_schema(model: type[BaseModel]) -> tuple[dict[str, Any], frozenset[str], frozenset[str]]:
    """(properties, required names, list-valued names) of a query model's JSON Schema, once per model."""
    schema = model.model_json_schema()
    if "$defs" in schema:
        raise TypeError(f"{model.__name__}: a query model's fields must be scalars or lists of them")
    props: dict[str, Any] = schema["properties"]
    lists = frozenset(
        name
        for name, prop in props.items()
        if prop.get("type") == "array" or any(alt.get("type") == "array" for alt in prop.get("anyOf", ()))
    )
    return props, frozenset(schema.get("required", ())), lists


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The OpenAPI ``parameters`` of a query model, as FastAPI lists separate ``Query()`` parameters.

    For a hot route that takes its query with :func:`parse_query`: ``openapi_extra={"parameters":
    query_parameters(Model)}`` documents it exactly as before (a test compares the two).
    """
    props, required, _ = _query_schema(model)
    params = []
    for name, prop in props.items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


def parse_query(request: Request, model: type[QueryModel]) -> QueryModel:
    """The request's query string as ``model``, validated in one call; 422 as FastAPI's own when invalid.

    FastAPI solves and validates each ``Query()`` parameter on its own, which on the ranker's hot
    route cost more than a tenth of a request. Repeated names are lists for list fields
    (``?exclude=a&exclude=b``) and the last value otherwise, as FastAPI does; a name the model does
    not have is refused by the route (:class:`StrictQueryRoute`, with the route documenting the
    model's fields through :func:`query_parameters`).
    """
    props, _, lists = _query_schema(model)
    params = request.query_params
    raw = {name: params.getlist(name) if name in lists else params[name] for name in params if name in props}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError([{**err, "loc": ("query", *err["loc"])} for err in exc.errors()]) from None


# At most this many unknown names are listed in a 422 (a 64 KB URL holds ~17,000 of them), each cut to this length.
_UNKNOWN_LISTED = 10
_NAME_SHOWN = 64


def _query_names(dependant: Dependant) -> frozenset[str] | None:
    """The query names FastAPI reads for ``dependant`` and its sub-dependencies (aliases, validation aliases,
    alias choices, field names where the config validates by name; a query model's fields), from FastAPI's
    own look-up; None when a query model keeps extra names (``extra="allow"``): any name is taken."""
    names: set[str] = set()
    pending = [dependant]
    while pending:
        current = pending.pop()
        pending.extend(current.dependencies)
        for field in current.query_params:
            model = _get_param_model(field)
            if model is not None and model.model_config.get("extra") == "allow":
                return None
            for flat in get_cached_model_fields(model) if model is not None else [field]:
                names.update(key for _, key in _get_param_aliases(flat))
    return frozenset(names)


class StrictQueryRoute(APIRoute):
    """A route that refuses query parameters it does not take: 422 naming them, not silently ignored.

    FastAPI ignores unknown query names, so a misspelt ``?exlude=i1`` recommended what was meant to be
    excluded and ``?limt=5`` answered fifty. The names a route takes are the ones FastAPI would read: its
    ``Query()`` parameters (its dependencies' and an including router's included, each alias FastAPI
    looks a value up by), plus those ``openapi_extra`` documents for a hot route that validates its query
    as one model (:func:`parse_query`). The check runs before the route's dependencies (so before a
    scope check: the names are in the open ``/openapi.json`` anyway) and only when there is a query
    string; the answer lists at most ``_UNKNOWN_LISTED`` names. Every router of every service and the
    health routes use this class (``APIRouter(route_class=StrictQueryRoute)``; a test asks every route).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        # FastAPI builds a handler per inclusion, with the including routers' dependencies in that
        # inclusion's dependant (a context variable it sets meanwhile; the route's own without one).
        context = _effective_route_context_var.get()
        effective = getattr(context, "dependant", None) if getattr(context, "original_route", None) is self else None
        allowed = _query_names(effective or self.dependant)
        if allowed is None:
            return handler
        extra = (self.openapi_extra or {}).get("parameters", ())
        allowed |= {p["name"] for p in extra if p.get("in") == "query"}
        takes = "this route takes " + (", ".join(sorted(allowed)) if allowed else "no query parameters")

        async def checked(request: Request) -> Response:
            if request.scope.get("query_string"):
                unknown = [name for name in dict.fromkeys(request.query_params) if name not in allowed]
                if unknown:
                    raise _unknown_query(unknown, takes)
            return await handler(request)

        return checked


def _unknown_query(unknown: list[str], takes: str) -> HTTPException:
    shown = [n if len(n) <= _NAME_SHOWN else n[: _NAME_SHOWN - 1] + "…" for n in unknown[:_UNKNOWN_LISTED]]
    more = f" and {len(unknown) - len(shown)} more" if len(unknown) > len(shown) else ""
    names = ", ".join(repr(n) for n in shown) + more
    return HTTPException(
        422,
        {
            "message": f"unknown query parameter{'s' if len(unknown) > 1 else ''} {names}: {takes}",
            "errors": [
                {"field": n, "message": "unknown query parameter"}
                if n
                else {"field": "query", "message": "a query parameter without a name (`?=…`)"}
                for n in shown
            ],
        },
    )


def error_response(status: int, detail: str, errors: list[dict[str, Any]] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if errors:
        body["errors"] = errors
    body.update(extra)
    return JSONResponse(status_code=status, content=body)


class FieldError(BaseModel):
    field: str = Field(description="Where in the request: `events[3].timestamp`, `user_id`, `body`, `headers`")
    message: str


class ErrorOut(BaseModel):
    """Every error answer of every service, whatever its status (``error_response``)."""

    model_config = ConfigDict(extra="allow", title="Error")

    detail: str = Field(description="What is wrong, in a sentence")
    errors: list[FieldError] | None = Field(
        default=None,
        description="Each field at fault (400, 404, 422 and the HTTP limits' refusals); absent otherwise",
    )


# Answers every operation may give besides its own (FastAPI documents only 422, in a shape of its own).
_GUARDED_ERRORS = {
    "401": "No API key, or an unknown one (`WWW-Authenticate: Bearer`)",
    "403": "The key lacks this route's scope",
    "429": "Over the rate limit, or too many failed authentications (`Retry-After`, `retry_after_s`)",
}
_BODY_ERRORS = {
    "400": "The body is not valid JSON (`errors` names `body` and where it breaks)",
    "413": "The body is over the service's limit (`max_bytes`)",
    "415": "The body was not sent as JSON (`Content-Type: application/json`)",
}
_INVALID = "Invalid request: `errors` names each field at fault, or a query parameter the route does not take"


def document_errors(app: FastAPI, open_paths: frozenset[str]) -> None:
    """OpenAPI says what the services answer on errors: the one :class:`ErrorOut` shape (FastAPI's default
    documents a 422 of its own ``HTTPValidationError`` shape, which no service sends), and the 401/403/429 of
    the key guard and the 400/413/415 of a body, which it did not document at all; and a 422 on every route,
    each of which refuses query parameters it does not take."""
    generate = app.openapi
    error = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")  # once, not per request
    defs = error.pop("$defs", {})

    def openapi() -> dict[str, Any]:
        schema = generate()  # FastAPI's, built once and cached; what follows is idempotent
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs)
        components["Error"] = error
        ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                # Every route: one without parameters still refuses a query it does not take (StrictQueryRoute).
                own = responses.get("422", {}).get("description")  # a route's own, else FastAPI's or none
                described = own if own and own != "Validation Error" else _INVALID
                responses["422"] = {"description": described, **ref}
                extra = {} if path in open_paths else dict(_GUARDED_ERRORS)
                if "requestBody" in operation:
                    extra.update(_BODY_ERRORS)
                for status, description in extra.items():
                    responses.setdefault(status, {"description": description, **ref})
                for status, answer in responses.items():
                    if status >= "400" and "content" not in answer:  # a route's own, described but not shaped
                        answer.update(ref)
        used = json.dumps(schema.get("paths", {}))
        for name in ("HTTPValidationError", "ValidationError"):
            if f'/{name}"' not in used:
                components.pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        broken = [e for e in exc.errors() if e.get("type") == "json_invalid"]
        if broken:
            # FastAPI's loc is ("body", <character offset>): say where, and name the body, not "[17]".
            at = broken[0].get("loc", ())[-1:]
            where = f" at character {at[0]}" if at and isinstance(at[0], int) else ""
            reason = (broken[0].get("ctx") or {}).get("error") or broken[0].get("msg", "JSON decode error")
            message = f"malformed JSON{where}: {reason}"
            return error_response(400, "malformed JSON body", [{"field": "body", "message": message}])
        errors = validation_errors(exc)
        kind = request.headers.get("content-type")
        if not is_json_content_type(kind) and any(tuple(e.get("loc", ())) == ("body",) for e in exc.errors()):
            # The body was not read as JSON at all: say so, not that the JSON is of the wrong shape.
            return unsupported_body(kind)
        named = sorted({e["field"] for e in errors[:MAX_ERRORS_LISTED]})
        more = " and more" if len(errors) > MAX_ERRORS_LISTED else ""
        return error_response(422, f"invalid request: {', '.join(named)}{more}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # One error shape everywhere: {"detail": str, "errors": [...]}.
        if isinstance(exc.detail, dict):
            extra = {k: v for k, v in exc.detail.items() if k != "message"}
            response = error_response(exc.status_code, str(exc.detail.get("message", "")), **extra)
        elif exc.status_code == 400:
            # FastAPI's own "There was an error parsing the body" (a form or undecodable body
            # where JSON was expected) says neither what nor where: name the body and its type.
            detail = str(exc.detail)
            if detail == _FASTAPI_BODY_ERROR:
                kind = request.headers.get("content-type", "none")
                detail = (
                    f"the request body could not be read as JSON (Content-Type {kind[:100]!r}): it must be UTF-8, "
                    "uncompressed (no Content-Encoding), nested at most 1,000 levels, with integers of at most "
                    "4,300 digits"
                )
            response = error_response(400, detail, [{"field": "body", "message": detail}])
        elif exc.status_code == 404 and exc.detail == "Not Found":  # the router's: no such route
            message = f"no route {request.url.path[:200]!r} (GET /openapi.json lists them)"
            response = error_response(404, message, [{"field": "path", "message": message}])
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"{request.method[:20]} is not allowed here" + (f" (allowed: {allowed})" if allowed else "")
            response = error_response(405, message, [{"field": "method", "message": message}])
        else:
            response = error_response(exc.status_code, str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, exc: ClientDisconnect) -> Response:
        # The client went (or was cut off for sending too slowly, scalerec_core.http_limits) while its body
        # was being read: not a fault of the service, and nobody reads the answer.
        log.debug("client left during %s %s", request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug must not leak a stack trace; it is logged with the trace id instead.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; see the service log for this request's trace id")


def is_json_content_type(value: str | None) -> bool:
    """``application/json`` or a ``+json`` type (parameters such as ``charset`` aside)."""
    media = (value or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def unsupported_body(content_type: str | None) -> JSONResponse:
    """415 for a body whose Content-Type is not JSON (FastAPI then does not parse it)."""
    sent = repr(content_type[:100]) if content_type else "none"
    message = f"the body must be JSON: send it with Content-Type: application/json (Content-Type was {sent})"
    return error_response(415, message, [{"field": "body", "message": message}])


def field_error(status: int, field: str, message: str) -> HTTPException:
    """An HTTPException in the project's error shape that names the field at fault."""
    return HTTPException(status, {"message": message, "errors": [{"field": field, "message": message}]})


_FASTAPI_BODY_ERROR = "There was an error parsing the body"


def parse_json_body(raw: bytes) -> Any:
    """Decode a body, raising a 400 that says where the JSON breaks."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise HTTPException(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except UnicodeDecodeError as exc:
        raise HTTPException(400, "malformed JSON: body is not UTF-8") from exc


class BodySizeLimit:
    """Reject bodies over ``max_bytes`` with a 413 before reading them all into memory, and compressed
    bodies (any ``Content-Encoding`` but identity) with a 415: no service decodes them, so a gzip body was a
    400 "could not be read" and a plain one labelled gzip was taken as it was."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, receive, send, int(length))
            return
        encoding = headers.get(b"content-encoding")
        if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
            named = encoding.decode("latin-1")[:40]
            message = f"Content-Encoding {named!r} is not supported: send the body uncompressed"
            await error_response(415, message, [{"field": "headers", "message": message}])(scope, receive, send)
            return
        # A body without Content-Length (chunked) is counted as it arrives.  Past the limit this
        # answers 413 itself and tells the app the client left: an exception raised from receive()
        # would be caught by the framework's body parsing and turned into a 400.
        seen = 0
        started = rejected = False

        async def limited_receive() -> Message:
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    rejected = True
                    if not started:
                        await self._reject(scope, receive, send, seen)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return  # the 413 has been answered; whatever the app says after it is dropped
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not rejected:
                raise
            log.debug("request stopped after its body went over %d bytes", self.max_bytes, exc_info=True)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        response = error_response(
            413, f"request body of {size} bytes is over the limit of {self.max_bytes} bytes", max_bytes=self.max_bytes
        )
        await response(scope, receive, send)


class RateLimiter:
    """Requests per caller in windows of ``burst / per_second`` seconds, counted by the ``limits`` library.

    The counters live in ``storage_url``: ``memory://`` (this process) or the deployment's
    Memcached (``memcached://h1:11211,h2:11211``), so every replica draws on one budget per
    caller.  They are named after ``namespace`` (the DEPLOYMENT) and ``name`` (which budget):
    two deployments on one Memcached, or the request and failed-authentication budgets of one,
    never share a counter.  A counter store that fails or is slow lets requests through: a broken cache
    degrades the limit, never the API.  Its calls time out after ``timeout_s`` and, once one
    fails, the store is left alone for ``backoff_s`` so a black-holed Memcached costs one
    timeout per back-off period, not one per request.
    """

    def __init__(
        self,
        per_second: float,
        burst: float | None = None,
        storage_url: str = "memory://",
        timeout_s: float = 0.05,
        backoff_s: float = 5.0,
        *,
        namespace: str = "scalerec",
        name: str = "requests",
    ) -> None:
        self.rate = per_second
        self.burst = burst or max(1.0, per_second * 2)
        self.backoff_s = backoff_s
        self._limiter: Any = None
        self._skip_until = 0.0
        self._scope = (namespace, name)
        if per_second > 0:
            from limits import RateLimitItemPerSecond
            from limits.storage import storage_from_string
            from limits.strategies import FixedWindowRateLimiter

            options: dict[str, Any] = {}
            if storage_url.startswith("memcached://"):
                options = {"connect_timeout": timeout_s, "timeout": timeout_s}
            amount = max(1, int(self.burst))
            self._item = RateLimitItemPerSecond(amount, max(1, math.ceil(amount / per_second)))
            self._limiter = FixedWindowRateLimiter(storage_from_string(storage_url, **options))

    def allow(self, caller: str) -> bool:
        return self.wait_seconds(caller) == 0

    def wait_seconds(self, caller: str) -> int:
        """0 when ``caller`` may go ahead (the hit is counted), else whole seconds until its window resets."""
        if self._limiter is None or time.monotonic() < self._skip_until:
            return 0
        try:
            if self._limiter.hit(self._item, *self._scope, caller):
                return 0
            reset_at = self._limiter.get_window_stats(self._item, *self._scope, caller).reset_time
        except Exception as exc:
            self._skip_until = time.monotonic() + self.backoff_s
            log.warning("rate-limit counters unavailable (%s); not limiting for %.0f s", exc, self.backoff_s)
            return 0
        return max(1, math.ceil(reset_at - time.time()))


# Matched exactly: "/healthz-debug" or "/docs/../v1/..." are not open.
# /metrics is open like the probes: Prometheus carries no API key, and the series hold route templates
# and counts, never an id (tests/e2e/test_metrics.py); OTEL_METRICS_EXPORTER=none turns it off.
_OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"}
)


class _AmbiguousKey(Exception):
    """More than one credential in one request."""


def _caller_key(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The API key of a request (X-API-Key, or Authorization: Bearer), None without one.

    Raises :class:`_AmbiguousKey` for two X-API-Key or two Authorization headers, or an X-API-Key and
    a bearer token that differ: which one counts could differ between this service and a proxy or
    gateway in front of it that reads the first, so neither does."""
    api_key = auth = None
    for name, value in headers:
        if name == b"x-api-key" and value:
            if api_key is not None:
                raise _AmbiguousKey
            api_key = value.decode("latin-1")
        elif name == b"authorization":
            if auth is not None:
                raise _AmbiguousKey
            auth = value.decode("latin-1")
    bearer = auth[7:].strip() if auth is not None and auth[:7].lower() == "bearer " else None
    if api_key is not None and bearer is not None and bearer != api_key:
        raise _AmbiguousKey
    return api_key if api_key is not None else bearer


class _Guard:
    """Authentication and rate limits as plain ASGI (no per-request task, unlike ``@app.middleware``).

    With a key ring every path but the health and docs ones needs a known key (401); the
    verified caller goes into the ASGI scope for the routes' scope checks (403).  Rate limits
    are per verified key, else per client address; failed authentications count against the
    address in a budget of their own (``failures``, on by default), so guessing keys is throttled
    even where requests are not.
    """

    def __init__(self, app: ASGIApp, keys: KeyRing | None, limiter: RateLimiter, failures: RateLimiter) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        caller = address
        if self.keys is not None:
            try:
                principal = self.keys.verify(_caller_key(scope.get("headers") or ()))
            except _AmbiguousKey:
                response = error_response(
                    401, "more than one API key in the request: send one X-API-Key or one Authorization: Bearer"
                )
                response.headers["www-authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
            if principal is None:
                wait = self.failures.wait_seconds(f"auth-failure:{address}")
                if wait:
                    response = error_response(
                        429, "too many failed authentications from this address", retry_after_s=wait
                    )
                    response.headers["retry-after"] = str(wait)
                    await response(scope, receive, send)
                    return
                response = error_response(
                    401, "missing or unknown API key: send X-API-Key or Authorization: Bearer <key>"
                )
                response.headers["www-authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
            scope[PRINCIPAL] = principal
            caller = principal.key_id
        wait = self.limiter.wait_seconds(caller)
        if wait:
            await self._too_many(wait, scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _too_many(self, wait_s: int, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(429, f"rate limit of {self.limiter.rate:g} requests/s exceeded", retry_after_s=wait_s)
        response.headers["retry-after"] = str(wait_s)
        await response(scope, receive, send)


def create_service_app(
    settings: ServiceSettings,
    *,
    service: str,
    description: str,
    lifespan: Callable[[FastAPI], Any],
    max_body_bytes: int = 4 * 1024 * 1024,
    readiness: Mapping[str, ReadinessCheck] | None = None,
) -> FastAPI:
    """The app every service starts from: titled and versioned as the release, FastAPI's OpenTelemetry on,
    ``settings`` in ``app.state`` (what ``deps.py`` providers read), and :func:`install_common`'s health,
    metrics, errors, keys and limits. The service adds its routers.

    Readiness checks may close over the returned app (they run only once it serves).
    """
    from scalerec_core import __version__
    from scalerec_core.telemetry import http_telemetry

    app = FastAPI(
        title=f"ScaleRec {service}",
        version=__version__,
        description=description,
        lifespan=lifespan,
        telemetry=http_telemetry(),
    )
    app.state.settings = settings
    install_common(app, settings, service=service, max_body_bytes=max_body_bytes, readiness=readiness)
    return app


def install_common(
    app: FastAPI,
    settings: ServiceSettings,
    *,
    service: str,
    max_body_bytes: int = 4 * 1024 * 1024,
    readiness: Mapping[str, ReadinessCheck] | None = None,
) -> None:
    """Health and metrics endpoints, error handlers, auth, rate and size limits.

    Keys and rate limits come from ``settings`` (one place for every service); with AUTH=disabled
    the service runs open, which is logged loudly.
    """
    from scalerec_core.telemetry import prometheus_enabled, render_metrics

    keys = settings.key_ring()
    rate_limit_per_second = settings.rate_limit_per_second
    rate_limit_storage = settings.rate_limit_storage()

    if keys is None:
        log.warning("%s runs with AUTH=disabled: every route is open to anyone who can reach it", service)
    _install_error_handlers(app)
    # Counters named after the deployment: deployments sharing a Memcached keep their own budgets.
    limiter = RateLimiter(rate_limit_per_second, storage_url=rate_limit_storage, namespace=settings.deployment)
    # A window of a minute: `failures_per_minute` tries, then 429 until the minute is over.
    per_minute = settings.auth_failures_per_minute
    failures = RateLimiter(
        per_minute / 60,
        burst=per_minute,
        storage_url=rate_limit_storage,
        namespace=settings.deployment,
        name="auth-failures",
    )
    checks = dict(readiness or {})
    app.router.route_class = StrictQueryRoute  # the health routes below, as every service router
    # Added innermost first: the body limit is outermost, then the guard. Request spans and metrics
    # come from FastAPI's own telemetry (scalerec_core.telemetry.http_telemetry), outside both.
    app.add_middleware(_Guard, keys=keys, limiter=limiter, failures=failures)
    document_keys(app, _OPEN_PATHS)
    document_errors(app, _OPEN_PATHS)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    @app.get("/healthz", tags=["health"], summary="Liveness: the process is up (with its task and thread counts)")
    async def healthz() -> dict[str, str | int]:
        # Counts an on-call engineer (and tests/faults/test_latency.py) watches for leaks under a slow backend.
        return {
            "status": "ok",
            "service": service,
            "asyncio_tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
        }

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics of this process (OTEL_METRICS_EXPORTER=prometheus)",
        response_class=Response,
        responses={200: {"content": {PROMETHEUS_TEXT: {}}}},
    )
    async def prometheus_metrics() -> Response:
        if not prometheus_enabled():
            raise HTTPException(404, "metrics are not served here: OTEL_METRICS_EXPORTER does not name prometheus")
        return Response(await render_metrics(), media_type=PROMETHEUS_TEXT)

    # Probes come every few seconds from every kubelet and load balancer: the checks (a Kafka admin
    # call, a store ping) run at most once per READY_CACHE_S, concurrent probes share one run.
    last: dict[str, Any] = {"at": -1e9, "results": {}, "task": None}

    async def one(check: ReadinessCheck) -> bool:
        try:
            return bool(await asyncio.wait_for(check(), timeout=READY_CHECK_TIMEOUT_S))
        except Exception:
            return False

    async def run_checks() -> dict[str, bool]:
        # Side by side: the answer comes within one check's timeout, under the probe's own (the chart's 3 s).
        answers = await asyncio.gather(*(one(check) for check in checks.values()))
        results = dict(zip(checks, answers, strict=True))
        last["at"], last["results"] = time.monotonic(), results
        return results

    @app.get("/readyz", tags=["health"], summary="Readiness: dependencies reachable (cached for a second or two)")
    async def readyz() -> JSONResponse:
        if time.monotonic() - last["at"] < READY_CACHE_S:
            results = last["results"]
        else:
            task = last["task"]
            if task is None or task.done():
                task = last["task"] = asyncio.ensure_future(run_checks())
            results = await asyncio.shield(task)
        ok = all(results.values())
        return JSONResponse(
            status_code=200 if ok else 503, content={"status": "ready" if ok else "degraded", "checks": results}
        )


def from_app_state(name: str) -> Any:
    """``Depends()`` on what the lifespan stored as ``app.state.<name>``, for a service's ``deps.py``.

    Used as ``SettingsDep = Annotated[RankerSettings, from_app_state("settings")]``: routes declare
    the type they get, which mypy checks, instead of reading ``request.app.state``. The provider is
    async so that FastAPI calls it on the event loop, not through the thread pool, on every request.
    """

    async def provide(request: Request) -> Any:
        return getattr(request.app.state, name)

    provide.__name__ = provide.__qualname__ = f"app_state_{name}"
    return Depends(provide)
