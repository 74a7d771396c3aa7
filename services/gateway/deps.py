"""Dependencies of the endpoints, declared once (``Annotated[..., Depends(...)]``).

Everything comes from the app's lifespan (``app.state.runtime``); nothing here is a
module-global client. They are ``async def`` so FastAPI calls them inline instead of
sending each to its thread pool. The recommendation routes call :func:`serving`
directly: one attribute lookup instead of three dependency resolutions per request.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from services.gateway.bundle import ServingBundle
from services.gateway.metrics import Metrics
from services.gateway.recommender import Recommender
from services.gateway.runtime import Runtime

__all__ = ["BundleDep", "MetricsDep", "RecommenderDep", "RuntimeDep", "require_api_key", "serving"]


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_bundle(runtime: RuntimeDep) -> ServingBundle:
    """The bundle served right now; a request keeps it to the end, across a hot swap."""
    return runtime.require_bundle()


async def get_recommender(runtime: RuntimeDep) -> Recommender:
    return runtime.recommender


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


BundleDep = Annotated[ServingBundle, Depends(get_bundle)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def serving(request: Request) -> tuple[Recommender, ServingBundle]:
    """The recommender and the bundle served right now (kept to the end of the request)."""
    runtime: Runtime = request.app.state.runtime
    return runtime.recommender, runtime.require_bundle()


_API_KEY = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="needed by the write and expensive routes when RECSYS_API_KEYS is set",
)


async def require_api_key(request: Request, key: Annotated[str | None, Security(_API_KEY)]) -> None:
    """401 unless ``RECSYS_API_KEYS`` is empty or the request carries one of its keys."""
    keys = request.app.state.api_keys
    if not keys:
        return
    given = (key or "").encode()
    if not any(hmac.compare_digest(given, k.encode()) for k in keys):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid X-API-Key header is needed",
            headers={"WWW-Authenticate": "APIKey"},
        )
