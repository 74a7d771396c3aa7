"""``GET /recommend/{uid}``: recall, then rank with the served ranker."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.deps import BundleDep, RecommenderDep
from services.gateway.routes.empty_uid import refuse_empty_uid
from services.gateway.schemas import RecommendResponse, TopK, UidPath

__all__ = ["router"]

router = APIRouter(tags=["recommendations"])


@router.get("/recommend/{uid}")
async def recommend(
    uid: UidPath, bundle: BundleDep, recommender: RecommenderDep, top_k: TopK = 10
) -> RecommendResponse:
    """The top_k items for a user, ranked, with each task's probability and the served version."""
    return await recommender.recommend(bundle, uid, top_k)


router.add_api_route("/recommend/", refuse_empty_uid, include_in_schema=False)
