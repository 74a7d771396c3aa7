"""Request and response bodies of the HTTP API (docs/architecture.md, "HTTP API").

Invalid input is refused with 422 naming the field and the reason: ``top_k`` outside
1..200, a uid that is empty, longer than 128 characters, not printable or not UTF-8, a
rerank request of more than 1000 items or a body that is not UTF-8 JSON. Every rule is
in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "MAX_RERANK_ITEMS",
    "MAX_TOP_K",
    "MAX_UID_LENGTH",
    "PROTECTED",
    "UNAVAILABLE",
    "ErrorResponse",
    "Event",
    "EventsRequest",
    "EventsResponse",
    "HealthResponse",
    "JSONBytes",
    "ItemId",
    "MAX_EVENTS",
    "RecallResponse",
    "ReadyResponse",
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
MAX_EVENTS = 1000


# printable: no Unicode "Other" (control, format, private, unassigned) or separator
# characters but the ASCII space, as str.isprintable; in the schema, checked by pydantic
UID_PATTERN = r"^(?:[^\p{C}\p{Z}]| )+$"
_UID_DOC = (
    f"user id: 1 to {MAX_UID_LENGTH} printable characters (no control, format or separator "
    "characters but the space; UTF-8 in the path); an unknown user is a cold start"
)

UidPath = Annotated[
    str,
    Path(min_length=1, max_length=MAX_UID_LENGTH, pattern=UID_PATTERN, description=_UID_DOC),
]
Uid = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_UID_LENGTH, pattern=UID_PATTERN),
    Field(description=_UID_DOC),
]
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ContextKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ContextValue = Annotated[str, StringConstraints(max_length=256)] | int | float | None


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
    degraded: bool = Field(
        description="answered without the store's recall lists: Redis was unreachable "
        "(memory hot list) or named no active version"
    )
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
    degraded: bool = Field(
        description="answered without the store's recall lists: Redis was unreachable "
        "(memory hot list) or named no active version"
    )
    items: list[ScoredItem] = Field(description="best first")
    request_id: str = Field(description="names this answer: events about it may carry it")


class RerankRequest(_Body):
    uid: Uid
    items: list[ItemId] = Field(
        max_length=MAX_RERANK_ITEMS,
        description=f"item ids to rank (at most {MAX_RERANK_ITEMS}; repeats count once)",
    )
    top_k: int | None = Field(
        None, ge=1, le=MAX_TOP_K, description="keep the best top_k (default: all)"
    )
    context: dict[ContextKey, ContextValue] | None = Field(
        None,
        max_length=32,
        description="the impression's context: the served version's context features "
        "(page, position, device, anchor…; a key it does not have is a 422, a value it has "
        "not seen is out-of-vocabulary); the hour and day of week come from the clock",
    )


class RerankResponse(_Body):
    uid: str
    stage: Literal["rerank"] = "rerank"
    is_cold_start: bool
    version: str
    items: list[ScoredItem] = Field(description="the known given items, best first")
    unknown_items: list[str] = Field(description="given ids the served bundle does not know")
    request_id: str = Field(description="names this answer: events about it may carry it")


class EventContext(_Body):
    page: str | None = Field(None, min_length=1, max_length=64, description="page or surface")
    position: int | None = Field(None, ge=0, le=10_000, description="0-based slot in the list")
    device: str | None = Field(None, min_length=1, max_length=32)
    anchor: ItemId | None = Field(None, description="the item a 'more like this' row was for")


class Event(_Body):
    event_id: str = Field(
        min_length=1, max_length=128, pattern=UID_PATTERN,
        description="the client's id of this event: a repeat of it is counted once",
    )  # fmt: skip
    uid: Uid
    item_id: ItemId
    type: str = Field(
        min_length=1, max_length=64,
        description="impression, or one of the served dataset's tasks (click, purchase, …)",
    )  # fmt: skip
    ts: float | None = Field(
        None, ge=0, le=1e11, description="when it happened, Unix seconds (default: on arrival)"
    )
    request_id: str | None = Field(
        None, max_length=64, description="the request_id of the answer that showed the item"
    )
    context: EventContext | None = None


class EventsRequest(_Body):
    events: list[Event] = Field(
        min_length=1, max_length=MAX_EVENTS, description=f"1 to {MAX_EVENTS} events"
    )


class EventsResponse(_Body):
    accepted: int = Field(description="events written")
    duplicates: int = Field(description="events whose event_id was already written")


class ErrorResponse(_Body):
    detail: str = Field(
        description="what is wrong; names the failing part, never a path or address"
    )


UNAVAILABLE = {
    503: {
        "model": ErrorResponse,
        "description": "no verified bundle to serve yet, or the worker's concurrency limit "
        "is reached (retry later)",
    }
}
PROTECTED = {
    401: {
        "model": ErrorResponse,
        "description": "RECSYS_API_KEYS is set: a valid X-API-Key is needed",
    },
    413: {"model": ErrorResponse, "description": "the body is over RECSYS_MAX_BODY_BYTES"},
}


class HealthResponse(_Body):
    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="ok; degraded: answering, with a dependency down or stale; "
        "unavailable: no verified bundle, recommendations are refused"
    )
    ready: bool = Field(description="what /readyz answers: a bundle is served, no drain begun")
    draining: bool = Field(description="SIGTERM received: stopping after the drain period")
    version: str | None = Field(description="the bundle version being served")
    dependencies: dict[str, str] = Field(
        description='each dependency\'s state: "ok", or what is wrong with it (no paths or '
        "addresses: those are in the log)"
    )
    failing: list[str] = Field(default_factory=list, description="dependencies that are not ok")


class ReadyResponse(_Body):
    ready: bool
    version: str | None = Field(description="the bundle version being served")
    degraded: bool = Field(description="answering with a dependency down or stale (see /health)")
    reason: str | None = Field(None, description="why not ready")
