"""Path uids the schema cannot see: an empty one, and bytes that are not UTF-8 (both 422)."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from fastapi import Request
from fastapi.exceptions import RequestValidationError

__all__ = ["check_utf8", "refuse_empty_uid"]


async def refuse_empty_uid() -> None:
    """A path with an empty uid (``/recommend/``) is invalid input, not a missing page."""
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


def check_utf8(uid: str, request: Request) -> None:
    """Refuse a uid whose bytes are not UTF-8.

    The server decodes such bytes to U+FFFD, so distinct invalid uids would collapse
    into one; the raw path tells them apart.
    """
    if "\ufffd" not in uid:
        return
    raw = unquote_to_bytes(request.scope.get("raw_path") or b"")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestValidationError(
            [
                {
                    "type": "string_unicode",
                    "loc": ("path", "uid"),
                    "msg": f"uid is not valid UTF-8 (byte {raw[e.start]:#04x})",
                    "input": raw[e.start : e.start + 8].hex(),
                }
            ]
        ) from None
