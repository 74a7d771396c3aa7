"""``POST /events``: feedback in, exactly once (behind the API key when one is set)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError

from services.gateway.deps import require_api_key
from services.gateway.events import IMPRESSION
from services.gateway.runtime import Runtime
from services.gateway.schemas import (
    PROTECTED,
    UNAVAILABLE,
    EventsRequest,
    EventsResponse,
    JSONBytes,
)
from shared.errors import StoreError

__all__ = ["router"]

router = APIRouter(tags=["feedback"])


@router.post(
    "/events",
    status_code=202,
    response_model=EventsResponse,
    response_class=JSONBytes,
    dependencies=[Depends(require_api_key)],
    responses={**PROTECTED, **UNAVAILABLE},
)
async def events(body: EventsRequest, request: Request) -> JSONBytes:
    """Impressions and outcomes (the served dataset's tasks) of users on items.

    A batch is written whole or not at all: an invalid event refuses the batch (422
    naming it), Redis unreachable answers 503 (retry: a repeated ``event_id`` counts
    once; ids are global, so make them unique). Positive events on items the served
    bundle knows are used by the next request of their user.
    """
    runtime: Runtime = request.app.state.runtime
    bundle = runtime.require_bundle()  # the served dataset's tasks name the event types
    types = (*bundle.tasks, IMPRESSION)
    if bad := [
        {
            "type": "literal_error",
            "loc": ("body", "events", i, "type"),
            "msg": f"type must be one of {', '.join(types)}",
            "input": e.type,
        }
        for i, e in enumerate(body.events)
        if e.type not in types
    ]:
        raise RequestValidationError(bad)
    known = bundle.item_rows([e.item_id for e in body.events]) > 0  # others: logged only
    try:
        recorded = await runtime.events.record(body.events, known.tolist())
    except (RedisError, OSError) as e:
        raise StoreError(
            f"redis unreachable ({type(e).__name__}): the batch was written whole or not at "
            "all; retry it (events already written count as duplicates)"
        ) from None
    runtime.metrics.events.labels("accepted").inc(recorded.accepted)
    runtime.metrics.events.labels("duplicate").inc(recorded.duplicates)
    runtime.recommender.warm(bundle, recorded.recent)  # their next request finds it done
    return JSONBytes(
        {"accepted": recorded.accepted, "duplicates": recorded.duplicates}, status_code=202
    )
