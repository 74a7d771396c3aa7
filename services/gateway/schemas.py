"""Request and response bodies of the HTTP API (ARCHITECTURE.md, "HTTP API").

Invalid input is refused with 422 naming the field and the reason: ``top_k`` outside
1..200, a uid that is empty, longer than 128 characters or not printable, a rerank
request of more than 1000 items.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import Path, Query
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "MAX_RERANK_ITEMS",
    "MAX_TOP_K",
    "MAX_UID_LENGTH",
    "HealthResponse",
    "JSONBytes",
    "ItemId",
    "RecallResponse",
    "RecommendResponse",
    "RerankRequest",
    "RerankResponse",
    "ScoredItem",
    "TopK",
    "UidPath",
]

MAX_TOP_K = 200
MAX_UID_LENGTH = 128
MAX_RERANK_ITEMS = 1000


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be printable (no control or separator characters)")
    return value


_UID_DOC = f"user id: 1 to {MAX_UID_LENGTH} printable characters; an unknown user is a cold start"

UidPath = Annotated[
    str,
    Path(min_length=1, max_length=MAX_UID_LENGTH, description=_UID_DOC),
    AfterValidator(_printable),
]
Uid = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_UID_LENGTH),
    AfterValidator(_printable),
    Field(description=_UID_DOC),
]
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K, description=f"how many items (1 to {MAX_TOP_K})")]


class JSONBytes(JSONResponse):
    """A JSON response rendered by orjson from plain data: no pydantic model per item.

    The routes still declare their ``response_model`` (the OpenAPI schema); the
    recommender builds dicts in exactly that shape (tests validate them against it).
    """

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecallResponse(_Body):
    uid: str
    stage: Literal["recall"] = "recall"
    version: str = Field(description="the bundle version that answered")
    count: int
    is_cold_start: bool = Field(description="the served bundle does not know this user")
    degraded: bool = Field(description="Redis was unreachable: answered from the memory hot list")
    items: list[str] = Field(description="item ids, best first")


class ScoredItem(_Body):
    id: str
    score: float = Field(
        description="the final ranking score, higher first: Σ_task weight · p(task), or, with "
        "the bundle's retrieval weight λ > 0, log(Σ_task weight · p(task)) + λ · u·v/τ"
    )
    scores: dict[str, float] = Field(description="each task's probability (funnel-chained)")


class RecommendResponse(_Body):
    uid: str
    stage: Literal["rank"] = "rank"
    is_cold_start: bool = Field(description="the served bundle does not know this user")
    version: str = Field(description="the bundle version that answered")
    degraded: bool = Field(description="Redis was unreachable: answered from the memory hot list")
    items: list[ScoredItem] = Field(description="best first")


class RerankRequest(_Body):
    uid: Uid
    items: list[ItemId] = Field(
        max_length=MAX_RERANK_ITEMS,
        description=f"item ids to rank (at most {MAX_RERANK_ITEMS}; repeats count once)",
    )
    top_k: int | None = Field(
        None, ge=1, le=MAX_TOP_K, description="keep the best top_k (default: all)"
    )


class RerankResponse(_Body):
    uid: str
    stage: Literal["rerank"] = "rerank"
    is_cold_start: bool
    version: str
    items: list[ScoredItem] = Field(description="the known given items, best first")
    unknown_items: list[str] = Field(description="given ids the served bundle does not know")


class HealthResponse(_Body):
    status: Literal["ok", "unavailable"]
    version: str | None = Field(description="the bundle version being served")
    dependencies: dict[str, str] = Field(
        description='each dependency\'s state: "ok", or what is wrong with it'
    )
    failing: list[str] = Field(default_factory=list, description="dependencies that are down")
