"""Checks and fixes every source's tables need, whatever their format."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from shared.errors import DataError

__all__ = ["require_unique", "with_all_ids"]

log = logging.getLogger(__name__)


def require_unique(frame: pl.DataFrame, key: str, path: Path, line_column: str | None) -> None:
    """Raise :class:`DataError` naming the file (and line) of the first repeated ``key``."""
    dup = ~frame[key].is_first_distinct()
    if dup.any():
        row = int(dup.arg_max())
        reason = f"duplicate {key} {frame[key][row]!r}"
        if line_column is None:
            raise DataError(path, f"{reason} (row {row + 1})")
        raise DataError(path, reason, int(frame[line_column][row]))


def with_all_ids(table: pl.DataFrame, ids: pl.Series, key: str) -> pl.DataFrame:
    """``table`` plus a row of null features for each id in ``ids`` it lacks."""
    seen = ids.unique(maintain_order=True)
    extra = seen.filter(~seen.is_in(table[key].implode())).rename(key)
    if extra.len():
        log.info("%d %s values have no feature row; their features are null", extra.len(), key)
    return pl.concat([table, extra.to_frame()], how="diagonal")
