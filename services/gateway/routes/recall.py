"""``GET /recall/{uid}``: the recall stage alone."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.deps import BundleDep, RecommenderDep
from services.gateway.routes.empty_uid import refuse_empty_uid
from services.gateway.schemas import RecallResponse, TopK, UidPath

__all__ = ["router"]

router = APIRouter(tags=["recommendations"])


@router.get("/recall/{uid}")
async def recall(
    uid: UidPath, bundle: BundleDep, recommender: RecommenderDep, top_k: TopK = 50
) -> RecallResponse:
    """Candidate item ids for a user: Redis recall list, else online tower + FAISS, else hot items."""
    return await recommender.recall(bundle, uid, top_k)


router.add_api_route("/recall/", refuse_empty_uid, include_in_schema=False)
