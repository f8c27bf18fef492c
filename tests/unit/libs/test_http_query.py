"""``parse_query`` and ``query_parameters``: a hot route validating its own query says what FastAPI would.

Each case is asked of two routes on the same model, the ranker's query: one where FastAPI solves the
query (``Annotated[Model, Query()]``), one that parses it itself. Status, body and OpenAPI must match.
``StrictQueryRoute``, which every service route is, refuses the query names a route does not take.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from scalerec_core.http import StrictQueryRoute, _install_error_handlers, parse_query, query_parameters
from scalerec_ranker.api.routes.recommendations import MAX_EXCLUDE, RecommendationsQuery


def _app(route_class: type[APIRoute] = APIRoute) -> FastAPI:
    app = FastAPI()
    app.router.route_class = route_class
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
    "user_id=u1&unknown=3",  # ignored by both (a StrictQueryRoute refuses it first: below)
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


def _limit(limit: Annotated[int, Query(ge=1)] = 10) -> int:
    return limit


def _tenant(tenant: str = "default") -> str:
    return tenant


class _ByName(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    first: int = Field(default=0, alias="First")
    second: int = Field(default=0, validation_alias="Second")


def _strict_app() -> FastAPI:
    app = _app(StrictQueryRoute)

    @app.get("/dependency")
    async def by_dependency(limit: Annotated[int, Depends(_limit)], offset: int = 0) -> dict[str, int]:
        return {"limit": limit, "offset": offset}

    @app.get("/nothing")
    async def nothing() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/aliases")
    async def aliases(
        x: Annotated[int, Query(validation_alias="vx")] = 0,
        y: Annotated[int, Query(validation_alias=AliasChoices("y1", "y2"))] = 0,
        z: Annotated[int, Query(alias="z-z")] = 0,
    ) -> dict[str, int]:
        return {"x": x, "y": y, "z": z}

    @app.get("/model")
    async def model(q: Annotated[_ByName, Query()]) -> dict[str, int]:
        return q.model_dump()

    included = APIRouter(route_class=StrictQueryRoute)

    @included.get("/included")
    async def in_router(page: int = 1) -> dict[str, int]:
        return {"page": page}

    app.include_router(included, prefix="/r", dependencies=[Depends(_tenant)])
    return app


@pytest.mark.parametrize("path", ["/fastapi", "/own"])
def test_a_strict_route_refuses_a_query_name_it_does_not_take_and_names_it(path: str) -> None:
    """A misspelt ``exlude`` was dropped: the answer recommended what the caller meant to exclude."""
    with TestClient(_strict_app()) as client:
        ok = client.get(f"{path}?user_id=u1&k=3&device=mobile&locale=en&exclude=i1&exclude=i2")
        misspelt = client.get(f"{path}?user_id=u1&exlude=i1&exlude=i2&Limit=3")
    assert ok.status_code == 200 and ok.json()["exclude"] == ["i1", "i2"]
    assert misspelt.status_code == 422
    assert misspelt.json() == {
        "detail": "unknown query parameters 'exlude', 'Limit': this route takes device, exclude, k, locale, user_id",
        "errors": [
            {"field": "exlude", "message": "unknown query parameter"},
            {"field": "Limit", "message": "unknown query parameter"},
        ],
    }


def test_a_strict_route_takes_its_dependencies_parameters_and_a_route_without_any_takes_none() -> None:
    with TestClient(_strict_app()) as client:
        assert client.get("/dependency?limit=5&offset=2").json() == {"limit": 5, "offset": 2}
        assert client.get("/dependency").json() == {"limit": 10, "offset": 0}
        assert client.get("/dependency?limit=0").status_code == 422  # still validated as before
        extra = client.get("/dependency?limit=5&page=2")
        assert client.get("/nothing").json() == {"status": "ok"}
        assert client.get("/nothing?").json() == {"status": "ok"}
        assert client.get("/nothing?&&").json() == {"status": "ok"}
        cache_buster = client.get("/nothing?_=1733600000")
        odd = client.get("/nothing?=1&query=2&body=3")
    assert extra.status_code == 422
    assert extra.json()["detail"] == "unknown query parameter 'page': this route takes limit, offset"
    assert cache_buster.status_code == 422
    assert cache_buster.json()["detail"] == "unknown query parameter '_': this route takes no query parameters"
    # Named as sent: not run through the field paths of validation errors, which drop "query" and "body".
    # A nameless one (`?=1`) is said to be in the query, as no field can be named.
    assert [e["field"] for e in odd.json()["errors"]] == ["query", "query", "body"]
    assert odd.json()["errors"][0]["message"] == "a query parameter without a name (`?=…`)"


def test_a_strict_route_takes_every_name_fastapi_reads_a_value_by() -> None:
    """Validation aliases, alias choices, a model validated by field name too, an including router's
    dependencies: refusing these would refuse requests FastAPI answers, and taking ``x`` for ``vx`` would
    silently drop a value again."""
    with TestClient(_strict_app()) as client:
        assert client.get("/aliases?vx=1&y2=2&z-z=3").json() == {"x": 1, "y": 2, "z": 3}
        assert client.get("/aliases?y1=5").json()["y"] == 5
        assert client.get("/aliases?x=1").status_code == 422  # FastAPI reads "vx", never "x"
        assert client.get("/aliases?z=3").status_code == 422
        assert client.get("/model?First=1&Second=2").json() == {"first": 1, "second": 2}
        assert client.get("/model?first=1&second=2").json() == {"first": 1, "second": 2}
        assert client.get("/model?third=3").status_code == 422
        assert client.get("/r/included?tenant=a&page=2").json() == {"page": 2}
        refused = client.get("/r/included?tenant=a&pg=2")
    assert refused.json()["detail"] == "unknown query parameter 'pg': this route takes page, tenant"


def test_the_answer_to_thousands_of_unknown_names_stays_small() -> None:
    """A 64 KB URL holds ~17,000 short names: each was an error of its own repeating the route's names
    (1.9 MB answered to a URL, 1.6 MB on the open /healthz)."""
    query = "&".join(f"n{i}=1" for i in range(5000)) + "&" + "x" * 3000 + "=1"
    with TestClient(_strict_app()) as client:
        answer = client.get(f"/nothing?{query}")
    assert answer.status_code == 422
    assert len(answer.content) < 1500, len(answer.content)
    body = answer.json()
    assert [e["field"] for e in body["errors"]] == [f"n{i}" for i in range(10)]
    assert "and 4991 more" in body["detail"]


def test_every_route_of_every_service_refuses_an_unknown_query_name_and_documents_its_422(tmp_path: Path) -> None:
    """One router built with FastAPI's default class would quietly ignore misspelt parameters again: every
    operation of every service's OpenAPI document is asked with a name no route takes."""
    import re

    for service in ("collector", "preprocessor", "trainer", "ranker", "evaluator"):
        config = importlib.import_module(f"scalerec_{service}.config")
        settings_cls = getattr(config, f"{service.title()}Settings")
        app = importlib.import_module(f"scalerec_{service}.main").create_app(
            settings_cls(data_dir=tmp_path / service, auth="disabled")
        )
        paths = app.openapi()["paths"]
        assert {"/healthz", "/readyz", "/metrics"} < set(paths), service
        client = TestClient(app)  # no lifespan: the query is refused before the route reads any state
        for path, operations in paths.items():
            url = re.sub(r"\{[^}]+\}", "x1", path)
            for method, op in operations.items():
                assert "422" in op["responses"], (service, method, path)
                answer = client.request(method.upper(), url, params={"zz_unknown": "1"})
                assert answer.status_code == 422, (service, method, path, answer.status_code)
                assert [e["field"] for e in answer.json()["errors"]] == ["zz_unknown"], (service, method, path)


def test_a_number_in_a_query_is_written_in_digits() -> None:
    """pydantic's lax int read "5_0" as 50 (fifty recommendations for k=5_0), and "10.0", " 10", "+10" as 10."""
    with TestClient(_strict_app()) as client:
        assert client.get("/own?user_id=u1&k=10").json()["k"] == 10
        for k in ("5_0", "10.0", "%2010", "%2B10", "1e1"):
            for path in ("/own", "/fastapi"):
                answer = client.get(f"{path}?user_id=u1&k={k}")
                assert answer.status_code == 422, (path, k, answer.text)
                assert answer.json()["errors"][0]["field"] == "k"
