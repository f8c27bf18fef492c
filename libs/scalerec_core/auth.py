"""API keys with scopes: every route but health needs a key, and the key must carry the route's scope.

``API_KEYS`` lists keys, comma-separated, each with the scopes it carries after a colon,
joined by ``+``: ``k-app:ingest+serve,k-ops:admin+erase``.  A key without a colon carries
every scope (one key for a whole dev setup).  The scopes:

- ``ingest``: POST events and items (collector);
- ``serve``: recommendations, similar items, the served model (ranker);
- ``erase``: DELETE a user (collector);
- ``admin``: train, evaluate, promote, reports, stats, a user's stored history.

A service with no keys refuses to start unless ``AUTH=disabled`` says it runs open (the
demo and ``scalerec serve`` do, and say so).  Keys are looked up by their SHA-256, so the
lookup's timing says nothing about how much of a guess was right, and the key itself is
never kept, logged or put in a metric label: callers are named by a short digest.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPBearer


class Scope(StrEnum):
    INGEST = "ingest"
    SERVE = "serve"
    ERASE = "erase"
    ADMIN = "admin"


ALL_SCOPES = frozenset(Scope)
PRINCIPAL = "scalerec.principal"  # where the guard leaves the verified caller in the ASGI scope


@dataclass(frozen=True)
class Principal:
    """A verified caller: a short digest of its key (never the key) and what it may do."""

    key_id: str
    scopes: frozenset[Scope]


OPEN = Principal("open", ALL_SCOPES)


class KeyRing:
    def __init__(self, keys: dict[str, frozenset[Scope]]) -> None:
        self._by_digest = {hashlib.sha256(k.encode()).digest(): (k, s) for k, s in keys.items()}

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """``key[:scope+scope],...`` → a key ring; a ValueError names an unknown scope."""
        keys: dict[str, frozenset[Scope]] = {}
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, scopes = part.partition(":")
            key = key.strip()
            if not key:
                raise ValueError("API_KEYS has an entry with an empty key")
            if not all("!" <= c <= "~" for c in key):
                # Header values reach the guard as latin-1, a key is hashed as UTF-8: a key with other characters
                # (ü, a space) could never be sent so that it verifies.
                raise ValueError("API_KEYS: a key must be printable ASCII without spaces (one is not)")
            if not sep:
                keys[key] = ALL_SCOPES
                continue
            try:
                keys[key] = frozenset(Scope(s.strip()) for s in scopes.split("+") if s.strip())
            except ValueError as exc:
                raise ValueError(
                    f"API_KEYS: unknown scope in {scopes!r}; scopes are {', '.join(s.value for s in Scope)}"
                ) from exc
        return cls(keys)

    def key_for(self, scope: Scope) -> str | None:
        """A key of this ring that carries ``scope`` (the first listed), for a client given the whole
        ``API_KEYS`` spec (the load tests, from the release's Secret); None when no key has it."""
        return next((key for key, scopes in self._by_digest.values() if scope in scopes), None)

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def verify(self, key: str | None) -> Principal | None:
        if not key:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0].encode(), key.encode()):
            return None
        return Principal(digest[:6].hex(), found[1])


# How OpenAPI documents a key (both ways to send one; /docs gets an Authorize button). The guard
# middleware verifies whichever was sent before routing, so routes take nothing from these.
_API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key with the route's scope")
_BEARER = HTTPBearer(auto_error=False, description="The same API key as a bearer token")
_SECURITY_SCHEMES = {
    type(scheme).__name__: scheme.model.model_dump(mode="json", by_alias=True, exclude_none=True)
    for scheme in (_API_KEY_HEADER, _BEARER)
}


def require(scope: Scope) -> Any:
    """A dependency that lets a request through only if its verified key carries ``scope`` (403 otherwise).

    It reads the caller the guard left in the ASGI scope and takes no sub-dependencies: it runs on
    every request, the ranker's hottest included (:func:`document_keys` puts the schemes in OpenAPI).
    """

    async def check(request: Request) -> Principal:
        principal: Principal | None = request.scope.get(PRINCIPAL)
        if principal is None:  # AUTH=disabled
            return OPEN
        if scope not in principal.scopes:
            have = ", ".join(sorted(s.value for s in principal.scopes)) or "none"
            raise HTTPException(403, f"this API key lacks the {scope.value!r} scope (it has: {have})")
        return principal

    return Depends(check)


def document_keys(app: FastAPI, open_paths: Collection[str]) -> None:
    """OpenAPI says what the guard enforces: every path but ``open_paths`` takes an API key, sent as
    ``X-API-Key`` or as a bearer token (one place, the guard's own list, instead of each route)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # FastAPI's, built once and cached; what follows is idempotent
        schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(_SECURITY_SCHEMES)
        requirement: list[dict[str, list[str]]] = [{name: []} for name in _SECURITY_SCHEMES]
        for path, operations in schema.get("paths", {}).items():
            if path not in open_paths:
                for operation in operations.values():
                    operation["security"] = requirement
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
