"""``GET /recall/{uid}``: the recall stage alone."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.gateway.deps import serving
from services.gateway.routes.context import encoded_context, query_context
from services.gateway.routes.uid import check_utf8, refuse_empty_uid
from services.gateway.schemas import UNAVAILABLE, JSONBytes, RecallResponse, TopK, UidPath

__all__ = ["router"]

router = APIRouter(tags=["recommendations"])


@router.get(
    "/recall/{uid}",
    response_model=RecallResponse,
    response_class=JSONBytes,
    responses=UNAVAILABLE,
)
async def recall(uid: UidPath, request: Request, top_k: TopK = 50) -> JSONBytes:
    """Candidate item ids for a user: Redis recall list, else online tower + FAISS, else hot items.

    Other query parameters are the request's context, as for ``/recommend``
    (``anchor=ITEM`` blends that item's nearest items in).
    """
    check_utf8(uid, request)
    recommender, bundle = serving(request)
    context = encoded_context(recommender, bundle, query_context(request), ("query",))
    return JSONBytes(await recommender.recall(bundle, uid, top_k, context))


router.add_api_route("/recall/", refuse_empty_uid, include_in_schema=False)
