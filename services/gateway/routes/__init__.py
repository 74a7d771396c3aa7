"""The gateway's routers, one module per endpoint family."""

from __future__ import annotations

from services.gateway.routes import health, metrics, recall, recommend, rerank

__all__ = ["routers"]

# included into the app one by one: a router of routers adds a matching level per request
routers = tuple(m.router for m in (recall, recommend, rerank, health, metrics))
