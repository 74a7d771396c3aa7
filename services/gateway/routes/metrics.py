"""``GET /metrics``: Prometheus text exposition."""

from __future__ import annotations

from fastapi import APIRouter, Response

from services.gateway.deps import MetricsDep
from services.gateway.metrics import CONTENT_TYPE

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """Latency histograms per route and stage, counters, the served version."""
    return Response(metrics.render(), media_type=CONTENT_TYPE)
