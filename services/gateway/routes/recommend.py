"""``GET /recommend/{uid}``: recall, then rank with the served ranker."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.gateway.deps import serving
from services.gateway.routes.context import encoded_context, query_context
from services.gateway.routes.uid import check_utf8, refuse_empty_uid
from services.gateway.schemas import UNAVAILABLE, JSONBytes, RecommendResponse, TopK, UidPath

__all__ = ["router"]

router = APIRouter(tags=["recommendations"])


@router.get(
    "/recommend/{uid}",
    response_model=RecommendResponse,
    response_class=JSONBytes,
    responses=UNAVAILABLE,
)
async def recommend(uid: UidPath, request: Request, top_k: TopK = 10) -> JSONBytes:
    """The top_k items for a user, ranked, with each task's probability and the served version.

    Other query parameters are the request's context, the served version's context
    features (``page``, ``device``, ``anchor``…; listed here by the served OpenAPI schema):
    a key it does not have is a 422, a value it has not seen is out-of-vocabulary.
    """
    check_utf8(uid, request)
    recommender, bundle = serving(request)
    context = encoded_context(recommender, bundle, query_context(request), ("query",))
    return JSONBytes(await recommender.recommend(bundle, uid, top_k, context))


router.add_api_route("/recommend/", refuse_empty_uid, include_in_schema=False)
