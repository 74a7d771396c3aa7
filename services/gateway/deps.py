"""Dependencies of the endpoints, declared once (``Annotated[..., Depends(...)]``).

Everything comes from the app's lifespan (``app.state.runtime``); nothing here is a
module-global client. They are ``async def`` so FastAPI calls them inline instead of
sending each to its thread pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.gateway.metrics import Metrics
from services.gateway.recommender import Recommender
from services.gateway.runtime import Runtime
from shared.serving import ServingBundle

__all__ = ["BundleDep", "MetricsDep", "RecommenderDep", "RuntimeDep"]


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
