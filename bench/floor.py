"""The floor ``bench/load.py`` measures the gateway against: bare FastAPI + one Redis read.

Each route does the least a recommender endpoint can: one ZREVRANGE of the same
published recall list the gateway reads and a JSON list of the first ``top_k`` ids
(``/rerank`` also parses and validates the same request body as the gateway). It
runs under the same server and worker settings as the gateway:

    python -m uvicorn --app-dir bench floor:create_app --factory --workers N

Configured by ``RECSYS_REDIS_URL`` and ``RECSYS_KEY_PREFIX``, like the gateway.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aredis
from fastapi import FastAPI, Request
from pydantic import BaseModel

__all__ = ["create_app"]


class RerankBody(BaseModel):
    uid: str
    items: list[str]
    top_k: int | None = None


def create_app() -> FastAPI:
    url = os.environ.get("RECSYS_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = os.environ.get("RECSYS_KEY_PREFIX", "recsys:")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = aredis.Redis.from_url(url, decode_responses=True)
        app.state.version = await app.state.redis.get(f"{prefix}active")
        yield
        await app.state.redis.aclose()

    app = FastAPI(lifespan=lifespan)

    async def first(request: Request, uid: str, top_k: int) -> list[str]:
        key = f"{prefix}v:{request.app.state.version}:recall:{uid}"
        return await request.app.state.redis.zrevrange(key, 0, top_k - 1)

    @app.get("/recall/{uid}")
    async def recall(request: Request, uid: str, top_k: int = 50) -> dict:
        return {"uid": uid, "items": await first(request, uid, top_k)}

    @app.get("/recommend/{uid}")
    async def recommend(request: Request, uid: str, top_k: int = 10) -> dict:
        return {"uid": uid, "items": await first(request, uid, top_k)}

    @app.post("/rerank")
    async def rerank(request: Request, body: RerankBody) -> dict:
        await first(request, body.uid, 1)
        return {"uid": body.uid, "items": body.items[: body.top_k or len(body.items)]}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app
