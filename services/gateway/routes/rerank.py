"""``POST /rerank``: rank items the caller chose."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.deps import BundleDep, RecommenderDep
from services.gateway.schemas import RerankRequest, RerankResponse

__all__ = ["router"]

router = APIRouter(tags=["recommendations"])


@router.post("/rerank")
async def rerank(
    request: RerankRequest, bundle: BundleDep, recommender: RecommenderDep
) -> RerankResponse:
    """The given items ranked for the user; ids the bundle does not know are listed apart."""
    return await recommender.rerank(bundle, request)
