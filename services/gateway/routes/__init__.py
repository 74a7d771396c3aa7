"""The gateway's routers, one module per endpoint family."""

from __future__ import annotations

from services.gateway.routes import events, health, metrics, recall, recommend, rerank

__all__ = ["lean_routers", "routers"]

# the app holds their routes itself (those with bodies through include_router, for the
# body limit): every level of routers adds a matching step per request
routers = tuple(m.router for m in (recall, recommend, rerank, events, health, metrics))
# the hot GET routes, also served by :func:`services.gateway.routes.lean.lean`
lean_routers = (recall.router, recommend.router)
