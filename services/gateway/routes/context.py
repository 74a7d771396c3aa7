"""A request's context (``?page=…&device=…&anchor=…``, or the rerank body's ``context``),
encoded against the served spec; what it cannot encode is a 422 naming each key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError

from services.gateway.bundle import ServingBundle
from services.gateway.recommender import Recommender
from shared.features import Context, ContextError

_SHOWN_VALUES = 12  # vocabulary values listed in a parameter's description

__all__ = ["context_parameters", "encoded_context", "query_context"]


def query_context(request: Request, declared: tuple[str, ...] = ("top_k",)) -> dict[str, str]:
    """The query parameters a route does not declare: the request's context."""
    return {k: v for k, v in request.query_params.items() if k not in declared}


def encoded_context(
    recommender: Recommender,
    bundle: ServingBundle,
    given: Mapping[str, Any],
    loc: tuple[str, ...],
) -> Context:
    """``given`` encoded for ``bundle`` now (unseen values are out-of-vocabulary).

    Raises:
        RequestValidationError: a key the served spec does not have, or a numeric value
            that is not a number; ``loc`` (``("query",)``, ``("body", "context")``) and
            the key name each.
    """
    try:
        return recommender.context(bundle, given)
    except ContextError as e:
        raise RequestValidationError(
            [
                {"type": "context", "loc": (*loc, key), "msg": why, "input": given.get(key)}
                for key, why in e.problems.items()
            ]
        ) from None


def context_parameters(bundle: ServingBundle) -> list[dict[str, Any]]:
    """The served version's context features as OpenAPI query parameters."""
    c, fmap = bundle.tables.context, bundle.tables.feature_map
    out = []
    for name in c.given:
        if name == c.anchor:
            about, schema = (
                "an item id: its nearest items join the recall, the ranker reads its features",
                {"type": "string"},
            )
        elif name in c.numeric:
            about, schema = "a number", {"type": "number"}
        elif name in fmap.hashed:
            about, schema = (
                f"any value (hashed into {fmap.hashed[name]} buckets)",
                {"type": "string"},
            )
        else:
            values = fmap.vocab[name]
            shown = ", ".join(values[:_SHOWN_VALUES]) + (
                ", …" if len(values) > _SHOWN_VALUES else ""
            )
            about, schema = f"one of {shown} (others are out-of-vocabulary)", {"type": "string"}
        if (default := c.defaults.get(name)) is not None:
            about += f"; default {default}"
        if name in c.positions:
            about += " (the slot the ranker scores every candidate at)"
        out.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": schema,
                "description": f"context ({bundle.version}): {about}",
            }
        )
    return out
