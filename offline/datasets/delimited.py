"""Strict, vectorised readers for the delimited text files of dataset sources.

The happy path is columnar (polars over the whole file); only when something is wrong
do we work out which line, so every error names ``file:line: problem``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from shared.errors import DataError

__all__ = ["Column", "read_csv", "read_delimited", "require_file"]

Column = tuple[str, type[pl.DataType] | pl.DataType]


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(path, "file not found")
    return path


def _decode(path: Path, encoding: str) -> str:
    raw = require_file(path).read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(path, f"bytes not decodable as {encoding} ({e.reason})", line) from None


def _cast_checked(
    frame: pl.DataFrame, columns: Sequence[Column], path: Path, first_line: int
) -> pl.DataFrame:
    """Cast string columns to their types; a value that does not parse names its line."""
    out = frame.with_columns(
        pl.col(name).str.strip_chars().cast(dtype, strict=False) for name, dtype in columns
    )
    for name, dtype in columns:
        bad = out[name].is_null() & frame[name].str.strip_chars().ne("").fill_null(False)
        if dtype != pl.String and bad.any():
            row = int(bad.arg_max())
            raise DataError(
                path, f"column {name!r}: {frame[name][row]!r} is not a valid {dtype}", first_line + row
            )
    return out


def read_delimited(
    path: Path,
    columns: Sequence[Column],
    sep: str,
    *,
    encoding: str = "utf-8",
    skip_header: bool = False,
) -> pl.DataFrame:
    """Read a file of ``sep``-separated fields without quoting (u.data, ratings.dat…).

    Every non-empty line must have exactly ``len(columns)`` fields; numeric columns must
    parse. Empty strings become nulls.

    Raises:
        DataError: naming the file, the line and the problem.
    """
    text = _decode(path, encoding)
    lines = pl.Series("line", text.splitlines(), dtype=pl.String)
    first = 1
    if skip_header:
        lines, first = lines.slice(1), 2
    line_no = pl.int_range(first, first + len(lines), eager=True)
    keep = lines.str.strip_chars().ne("")
    lines, line_no = lines.filter(keep), line_no.filter(keep)
    n_fields = lines.str.count_matches(sep, literal=True) + 1
    wrong = n_fields != len(columns)
    if wrong.any():
        row = int(wrong.arg_max())
        raise DataError(
            path, f"expected {len(columns)} fields separated by {sep!r}, found {n_fields[row]}", line_no[row]
        )
    names = [name for name, _ in columns]
    parts = lines.str.split(sep, inclusive=False).list.to_struct(fields=names)
    frame = pl.DataFrame({"parts": parts}).unnest("parts")
    if line_no.len() and int(line_no[-1] - line_no[0]) != len(line_no) - 1:
        # blank lines were dropped: map rows back to their real line numbers on error
        try:
            return _cast_checked(frame, columns, path, 0)
        except DataError as e:
            row = (e.line or 0)
            raise DataError(path, e.reason, int(line_no[row])) from None
    return _cast_checked(frame, columns, path, int(line_no[0]) if len(line_no) else first)


def read_csv(path: Path, columns: Sequence[Column], *, encoding: str = "utf-8") -> pl.DataFrame:
    """Read a quoted CSV file with a header row holding at least the named columns.

    Raises:
        DataError: naming the file, the line and the problem (missing column, wrong
            field count, unparsable value, undecodable bytes).
    """
    text = _decode(path, encoding)
    header = next(csv.reader(io.StringIO(text)), None)
    if header is None:
        raise DataError(path, "file is empty", 1)
    missing = [name for name, _ in columns if name not in header]
    if missing:
        raise DataError(path, f"missing column {missing[0]!r} in header {header}", 1)
    try:
        frame = pl.read_csv(
            io.StringIO(text), infer_schema=False, columns=[n for n, _ in columns], raise_if_empty=False
        )
    except pl.exceptions.PolarsError as e:
        # only now pay for a line-by-line pass, to say where the file is broken
        line, found = _ragged(text, len(header)) or (None, None)
        if line is None:
            raise DataError(path, f"unreadable CSV ({str(e).splitlines()[0]})") from None
        raise DataError(path, f"expected {len(header)} fields, found {found}", line) from None
    return _cast_checked(frame, columns, path, 2)


def _ragged(text: str, width: int) -> tuple[int, int] | None:
    reader = csv.reader(io.StringIO(text))
    for row in reader:
        if row and len(row) != width:
            return reader.line_num, len(row)
    return None
