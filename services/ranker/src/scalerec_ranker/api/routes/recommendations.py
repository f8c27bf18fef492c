"""GET and POST /v1/recommendations, GET /v1/items/{item_id}/similar, GET /v1/model."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from scalerec_core.auth import Scope, require
from scalerec_core.http import Digits, StrictQueryRoute, parse_query, query_parameters
from scalerec_events.models import ID_MAX_LENGTH, ID_PATTERN, Id
from scalerec_features import Device

from scalerec_ranker.deps import RecommenderDep
from scalerec_ranker.recommend import Recommendation, Recommender

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1", tags=["recommendations"], dependencies=[require(Scope.SERVE)], route_class=StrictQueryRoute
)

# Most item ids one request may exclude (a screenful or a few pages of them).
MAX_EXCLUDE = 500


class ItemOut(BaseModel):
    item_id: str
    score: float
    source: str
    reason: str
    because: list[str]
    title: str
    category: str


class RecommendationsOut(BaseModel):
    request_id: str
    user_id: str
    model_version: int | None
    fallback: bool
    fallback_reason: str | None
    scorer: str
    history_source: str
    took_ms: float
    candidates_scored: int
    variant: str | None = Field(
        description="The experiment variant this user is assigned to (send it back with feedback); null outside experiments."
    )
    experiment_id: str | None
    items: list[ItemOut]


# The answer is serialised straight from the dataclasses the recommender built (pydantic-core, one
# call), not copied into RecommendationsOut and validated again: that copy cost the request path more
# than re-ranking.  RecommendationsOut stays the documented schema; a test holds the two together.
_ANSWER = TypeAdapter(Recommendation)


def answer_json(rec: Recommendation) -> bytes:
    return _ANSWER.dump_json(rec)


def _exclude(more: str = "") -> Any:
    return Field(
        max_length=MAX_EXCLUDE,
        description=f"Item ids not to recommend (e.g. on screen now), at most {MAX_EXCLUDE}, same rules as item_id{more}",
    )


class RecommendationsQuery(BaseModel):
    """The query of GET /v1/recommendations, validated in one call (:func:`scalerec_core.http.parse_query`)."""

    user_id: Annotated[str, Field(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
    k: Annotated[int | None, Digits, Field(ge=1, description="How many items (default DEFAULT_K, at most MAX_K)")] = (
        None
    )
    device: Device | None = None
    locale: Annotated[str | None, Field(max_length=16)] = None
    exclude: Annotated[
        list[Id] | None,
        _exclude(
            "; the whole URL must stay within 65,535 bytes (414 past it): 500 ids of up to ~120 characters. "
            "POST /v1/recommendations takes the same fields as a JSON body, without that limit"
        ),
    ] = None


class RecommendationsRequest(RecommendationsQuery):
    """The body of POST /v1/recommendations: GET's query fields as a JSON object, for exclusion lists that a
    URL cannot carry (500 ids of up to 128 characters are ~65 KB). A field the ranker does not know is a 422,
    not ignored: a misspelt ``exlude`` must not quietly recommend what was meant to be excluded."""

    model_config = ConfigDict(extra="forbid")

    # A JSON number, not true (lax mode reads it as 1) or "10" (a query's values are strings; a body's are not).
    k: Annotated[
        int | None, Field(ge=1, strict=True, description="How many items (default DEFAULT_K, at most MAX_K)")
    ] = None
    exclude: Annotated[list[Id] | None, _exclude()] = None


async def _serve(recommender: Recommender, query: RecommendationsQuery) -> Response:
    """The answer to a validated request, whichever way it came (GET's query or POST's body)."""
    settings = recommender.settings
    k = query.k or settings.default_k
    if k > settings.max_k:
        raise HTTPException(
            422,
            {
                "message": f"k={k} is over the maximum of {settings.max_k}",
                "errors": [{"field": "k", "message": f"at most {settings.max_k}"}],
            },
        )
    rec = await recommender.recommend(query.user_id, k, query.device, query.locale, query.exclude or ())
    return Response(answer_json(rec), media_type="application/json")


@router.get(
    "/recommendations",
    response_model=RecommendationsOut,
    summary="Recommendations for a user",
    openapi_extra={"parameters": query_parameters(RecommendationsQuery)},
)
async def recommendations(request: Request, recommender: RecommenderDep) -> Response:
    """Each item carries its candidate source, a score, and a reason naming the history item behind it.

    ``fallback`` is true (with ``fallback_reason``) when the answer came from a baseline: unknown user,
    no promoted model, or a scorer that could not answer.
    """
    # The hottest route: its query is one model validated in one call, not five parameters FastAPI
    # solves one by one, and the recommender publishes the impression (one dependency, not two).
    return await _serve(recommender, parse_query(request, RecommendationsQuery))


@router.post(
    "/recommendations",
    response_model=RecommendationsOut,
    summary="Recommendations for a user, asked with a JSON body",
)
async def recommendations_by_body(body: RecommendationsRequest, recommender: RecommenderDep) -> Response:
    """The same answer as ``GET /v1/recommendations`` for the same fields, sent as JSON: for ``exclude``
    lists longer than a URL can carry. Asking for recommendations changes nothing but the impression it
    publishes, as with GET."""
    return await _serve(recommender, body)


class SimilarOut(BaseModel):
    item_id: str
    model_version: int | None
    items: list[ItemOut]


@router.get("/items/{item_id}/similar", response_model=SimilarOut, summary="Items similar to an item")
async def similar(
    rec: RecommenderDep,
    item_id: Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)],
    k: Annotated[int, Digits, Query(ge=1, le=100)] = 10,
) -> SimilarOut:
    known = await rec.lookup([item_id])
    if item_id not in known:
        raise HTTPException(
            404,
            {
                "message": f"unknown item_id {item_id!r}",
                "errors": [{"field": "item_id", "message": "not in the catalogue"}],
            },
        )
    model = rec.models.current
    neighbours: list[tuple[str, float, str]] = []
    if model is not None:
        # Items seen together first (the trainer's item-CF neighbours); then, for an item with fewer of
        # them (a new or rarely seen one), the items nearest in the version's embeddings. Twice k of those,
        # since unavailable ones are dropped below.
        neighbours = [(i, s, "item_cf") for i, s in model.model.neighbors.get(item_id, [])]
        if len(neighbours) < k:
            taken = {i for i, _, _ in neighbours}
            nearest = await asyncio.to_thread(model.model.similar_items, item_id, 2 * k)
            neighbours += [(i, s, "retrieval") for i, s in nearest if i not in taken]
    catalogue = await rec.lookup([i for i, _, _ in neighbours])
    name = known[item_id].title or item_id
    items = [
        ItemOut(
            item_id=i,
            score=s,
            source=src,
            reason=f"Often seen with {name}" if src == "item_cf" else f"Similar to {name}",
            because=[item_id],
            title=catalogue[i].title,
            category=catalogue[i].category,
        )
        for i, s, src in neighbours
        if i in catalogue and catalogue[i].available
    ]
    return SimilarOut(item_id=item_id, model_version=model.version if model else None, items=items[:k])


class ModelOut(BaseModel):
    model_version: int | None = Field(description="The champion this replica serves outside experiments.")
    scorer: str
    last_error: str | None
    card: dict
    experiment_id: str | None = Field(description="The running experiment this replica routes users by.")
    variants: dict[str, int] = Field(description="Each variant of that experiment and the version it serves.")
    candidate_vectors: bool = Field(
        description="The champion's candidates are scored on vectors computed once per item (in-process scoring of "
        "a version exported with candidate graphs); false: on their ids and content, by the whole ranker graph."
    )


@router.get("/model", response_model=ModelOut, summary="The model version being served")
async def current_model(rec: RecommenderDep) -> ModelOut:
    manager = rec.models
    model = manager.current
    return ModelOut(
        model_version=model.version if model else None,
        scorer=rec.scorer.name,
        last_error=manager.last_error,
        card=model.model.card if model else {},
        experiment_id=manager.routing.experiment.experiment_id if manager.routing else None,
        variants={name: m.version for name, m in manager.routing.models.items()} if manager.routing else {},
        candidate_vectors=model is not None and model.table.vectors is not None,
    )
