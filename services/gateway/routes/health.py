"""Probes: ``/livez`` (alive), ``/readyz`` (send traffic here?) and ``/health`` (everything).

Point a liveness probe at ``/livez``, a readiness probe or a load balancer at
``/readyz``; ``/health`` is for people and dashboards. With Redis down the gateway stays
ready (it answers degraded, from the bundle), so a Redis outage never pulls every
replica out of the pool at once.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from services.gateway.deps import RuntimeDep
from services.gateway.schemas import HealthResponse, ReadyResponse

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/livez")
async def livez() -> dict[str, str]:
    """The process answers (nothing else is checked)."""
    return {"status": "alive"}


@router.get(
    "/readyz",
    responses={503: {"model": ReadyResponse, "description": "no verified bundle, or draining"}},
)
async def readyz(runtime: RuntimeDep, response: Response) -> ReadyResponse:
    """200 while a verified bundle is served and no drain has begun, degraded or not."""
    report = runtime.readiness()
    if not report.ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return report


@router.get(
    "/health",
    responses={503: {"model": HealthResponse, "description": "no verified bundle to serve"}},
)
async def health(runtime: RuntimeDep, response: Response) -> HealthResponse:
    """Each dependency's state and the served version; 503 only when nothing can be served."""
    report = await runtime.health()
    if report.status == "unavailable":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return report
