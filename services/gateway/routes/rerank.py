"""``POST /rerank``: rank items the caller chose."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.gateway.deps import serving
from services.gateway.schemas import JSONBytes, RerankRequest, RerankResponse

__all__ = ["router"]

router = APIRouter(tags=["recommendations"])


@router.post("/rerank", response_model=RerankResponse, response_class=JSONBytes)
async def rerank(body: RerankRequest, request: Request) -> JSONBytes:
    """The given items ranked for the user; ids the bundle does not know are listed apart."""
    recommender, bundle = serving(request)
    return JSONBytes(await recommender.rerank(bundle, body))
