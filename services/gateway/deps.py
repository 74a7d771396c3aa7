"""Dependencies of the endpoints, declared once (``Annotated[..., Depends(...)]``).

Everything comes from the app's lifespan (``app.state.runtime``); nothing here is a
module-global client. They are ``async def`` so FastAPI calls them inline instead of
sending each to its thread pool. The recommendation routes call :func:`serving`
directly: one attribute lookup instead of three dependency resolutions per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.gateway.bundle import ServingBundle
from services.gateway.metrics import Metrics
from services.gateway.recommender import Recommender
from services.gateway.runtime import Runtime

__all__ = ["BundleDep", "MetricsDep", "RecommenderDep", "RuntimeDep", "serving"]


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
