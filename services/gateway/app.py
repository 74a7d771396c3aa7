"""The gateway app: ``create_app(settings)`` builds it, its lifespan builds the runtime.

The lifespan creates the Redis pool, loads the active bundle (models, FAISS index,
tables) and starts the hot-reload poller; nothing is created at import
time, so several apps (tests) live side by side, each with its own metrics registry.
Errors become statuses here, at the edge: no bundle → 503, invalid input
→ 422 (echoing at most a short prefix of what was sent), a body over
``max_body_bytes`` → 413, a missing API key → 401, anything else → 500 (counted in
``recsys_errors_total{kind="internal"}``). Bodies name the failing part, never a path
or an address.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.metrics import Metrics
from services.gateway.recommender import Clock, utc_now
from services.gateway.routes import lean_routers, routers
from services.gateway.routes.context import context_parameters
from services.gateway.routes.lean import lean
from services.gateway.runtime import Runtime
from services.gateway.server import drain_on_sigterm
from shared.errors import BundleError, RecsysError, StoreError
from shared.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_ERROR_KINDS = ((BundleError, "bundle"), (StoreError, "redis"))  # → recsys_errors_total{kind}
_MAX_ERRORS = 10  # validation errors listed in a 422
_MAX_ECHO = 64  # characters of an invalid input echoed back


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock = utc_now,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """A gateway app.

    Args:
        settings (Settings | None): defaults to ``Settings()`` (the ``RECSYS_*`` env).
        clock (Clock): the current time for the context features (tests pin it).
        registry (CollectorRegistry | None): where metrics go (a fresh one by default).

    Returns:
        FastAPI: the app; its lifespan starts and stops the runtime.
    """
    settings = settings or Settings()
    metrics = Metrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.torch_threads)
        runtime = Runtime(settings, metrics, clock)
        app.state.runtime = runtime
        drain_on_sigterm(runtime.start_drain, settings.drain_s)
        await runtime.start()
        try:
            yield
        finally:
            await runtime.aclose()
            metrics.close()

    # the body limit only where there are bodies (its layers cost a GET ~8 %); the other
    # routes are the app's own, since an included router adds a layer of matching to each
    # request (+3 % /recommend req/s without it, measured)
    with_bodies = [
        r for r in routers if any({"POST", "PUT"} & getattr(x, "methods", set()) for x in r.routes)
    ]
    # the hot GET routes go first, lean (services.gateway.routes.lean): their APIRoutes
    # behind them only define the OpenAPI schema
    fast = [lean(route) for r in lean_routers for route in r.routes]
    app = FastAPI(
        routes=fast + [route for r in routers if r not in with_bodies for route in r.routes],
        title="recsys gateway",
        summary="Two-stage recommendations: recall (Redis, two-tower + FAISS) then DCN-v2/DeepFM ranking.",
        version="0.1.0",
        lifespan=lifespan,
        # "/recall/a%2F" decodes to "/recall/a/": a uid with a slash is not addressable,
        # and redirecting it to "/recall/a" would answer for another user
        redirect_slashes=False,
    )
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.api_keys = settings.api_key_set
    for router in with_bodies:
        app.include_router(router, max_body_size=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """The schema, with the served version's context features as query parameters."""
        schema = base_openapi()
        runtime = getattr(app.state, "runtime", None)
        bundle = runtime.bundle if runtime is not None else None
        if bundle is None:
            return schema
        schema = copy.deepcopy(schema)
        for path in ("/recall/{uid}", "/recommend/{uid}"):
            route = schema["paths"][path]["get"]
            route["parameters"] = [*route.get("parameters", []), *context_parameters(bundle)]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(RequestValidationError)
    async def invalid_input(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.labels("validation").inc()
        errors = [_brief(e) for e in exc.errors()[:_MAX_ERRORS]]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI: a body it could not decode (not UTF-8)
            return await invalid_input(
                request,
                RequestValidationError(
                    [
                        {
                            "type": "json_invalid",
                            "loc": ("body",),
                            "msg": "the body is not UTF-8 JSON",
                        }
                    ]
                ),
            )
        return await http_exception_handler(request, exc)

    @app.exception_handler(RecsysError)
    async def unavailable(request: Request, exc: RecsysError) -> JSONResponse:
        kind = next((k for cls, k in _ERROR_KINDS if isinstance(exc, cls)), "recsys")
        metrics.errors.labels(kind).inc()
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        metrics.errors.labels("internal").inc()
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    return app


def _brief(error: Any) -> dict[str, Any]:
    """A validation error with at most a short prefix of the offending input."""
    brief = {k: error[k] for k in ("type", "loc", "msg", "ctx") if k in error}
    if "input" in error:
        value = error["input"]
        if isinstance(value, str):
            value = value[:_MAX_ECHO]
        elif isinstance(value, bytes):
            value = value[:_MAX_ECHO].hex()
        elif isinstance(value, list | tuple | dict) and len(repr(value)) > 4 * _MAX_ECHO:
            value = f"<{type(value).__name__} of {len(value)} entries>"
        brief["input"] = value
    return brief


class RequestMetrics:
    """ASGI middleware: latency and count of every request by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "<unmatched>")
            latency, count = self._children.get((route, status)) or self._child(route, status)
            latency.observe(time.perf_counter() - started)
            count.inc()

    def _child(self, route: str, status: int) -> tuple[Any, Any]:
        """The labelled series of a (route, status), looked up once (label lookups lock)."""
        pair = (
            self.metrics.request_latency.labels(route),
            self.metrics.requests.labels(route, str(status)),
        )
        self._children[(route, status)] = pair
        return pair
