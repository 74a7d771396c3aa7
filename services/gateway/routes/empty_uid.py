"""A path with an empty uid (``/recommend/``) is invalid input (422), not a missing page."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError

__all__ = ["refuse_empty_uid"]


async def refuse_empty_uid() -> None:
    raise RequestValidationError(
        [
            {
                "type": "string_too_short",
                "loc": ("path", "uid"),
                "msg": "uid must not be empty",
                "input": "",
            }
        ]
    )
