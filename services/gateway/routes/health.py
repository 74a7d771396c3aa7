"""``GET /health``: each dependency's state; 503 when one the gateway needs is down."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from services.gateway.deps import RuntimeDep
from services.gateway.schemas import HealthResponse

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    responses={503: {"model": HealthResponse, "description": "a dependency is down"}},
)
async def health(runtime: RuntimeDep, response: Response) -> HealthResponse:
    """Redis and bundle state and the served version; 503 naming what is down."""
    report = await runtime.health()
    if report.failing:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return report
