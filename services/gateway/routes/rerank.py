"""``POST /rerank``: rank items the caller chose (behind the API key when one is set)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from services.gateway.deps import require_api_key, serving
from services.gateway.routes.context import encoded_context
from services.gateway.schemas import (
    PROTECTED,
    UNAVAILABLE,
    JSONBytes,
    RerankRequest,
    RerankResponse,
)

__all__ = ["router"]

router = APIRouter(tags=["recommendations"])


@router.post(
    "/rerank",
    response_model=RerankResponse,
    response_class=JSONBytes,
    dependencies=[Depends(require_api_key)],
    responses={**PROTECTED, **UNAVAILABLE},
)
async def rerank(body: RerankRequest, request: Request) -> JSONBytes:
    """The given items ranked for the user; ids the bundle does not know are listed apart."""
    recommender, bundle = serving(request)
    context = encoded_context(recommender, bundle, body.context or {}, ("body", "context"))
    return JSONBytes(await recommender.rerank(bundle, body, context))
