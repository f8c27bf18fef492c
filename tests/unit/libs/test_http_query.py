"""``parse_query`` and ``query_parameters``: a hot route validating its own query says what FastAPI would.

Each case is asked of two routes on the same model, the ranker's query: one where FastAPI solves the
query (``Annotated[Model, Query()]``), one that parses it itself. Status, body and OpenAPI must match.
"""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import FastAPI, Query, Request
from fastapi.testclient import TestClient
from scalerec_core.http import _install_error_handlers, parse_query, query_parameters
from scalerec_ranker.api.routes.recommendations import MAX_EXCLUDE, RecommendationsQuery


def _app() -> FastAPI:
    app = FastAPI()
    _install_error_handlers(app)

    @app.get("/fastapi")
    async def by_fastapi(query: Annotated[RecommendationsQuery, Query()]) -> dict[str, object]:
        return query.model_dump()

    @app.get("/own", openapi_extra={"parameters": query_parameters(RecommendationsQuery)})
    async def own(request: Request) -> dict[str, object]:
        return parse_query(request, RecommendationsQuery).model_dump()

    return app


CASES = [
    "user_id=u1",
    "user_id=u1&k=10&device=mobile&locale=en-US&exclude=i1&exclude=i2",
    "user_id=u1&user_id=u2",  # the last value, as FastAPI takes it
    "user_id=u1&unknown=3",  # unknown names are ignored
    "",  # user_id missing
    "user_id=",
    "user_id=u1&k=0",
    "user_id=u1&k=ten",
    "user_id=u1&k=",
    "user_id=u1&device=fridge",
    "user_id=u1&locale=" + "x" * 17,
    "user_id=u1&exclude=i1&exclude=i%7C2",
    "user_id=u1&exclude=" + "&exclude=".join(f"i{n}" for n in range(MAX_EXCLUDE + 1)),
    "user_id=" + "u" * 129 + "&k=-1",
]


@pytest.mark.parametrize("query", CASES)
def test_own_parsing_answers_as_fastapi_does(query: str) -> None:
    with TestClient(_app()) as client:
        theirs = client.get(f"/fastapi?{query}")
        ours = client.get(f"/own?{query}")
    assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json())


def test_own_parsing_is_documented_as_fastapi_documents_it() -> None:
    doc = _app().openapi()
    assert doc["paths"]["/own"]["get"]["parameters"] == doc["paths"]["/fastapi"]["get"]["parameters"]
    ranker = {p["name"]: p for p in doc["paths"]["/own"]["get"]["parameters"]}
    assert list(ranker) == ["user_id", "k", "device", "locale", "exclude"]
    assert ranker["user_id"]["required"] and not ranker["exclude"]["required"]
