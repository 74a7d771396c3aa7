"""The gateway's routers, one module per endpoint family."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.routes import health, metrics, recall, recommend, rerank

__all__ = ["api_router"]

api_router = APIRouter()
for module in (recall, recommend, rerank, health, metrics):
    api_router.include_router(module.router)
