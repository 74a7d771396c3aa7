"""Strict, vectorised readers for the delimited text files of dataset sources.

The happy path is columnar (polars over the whole file); only when something is wrong
or suspicious do we walk the file line by line to find where, so every error names
``file:line: problem``.
"""

from __future__ import annotations

import csv
import logging
from array import array
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

import polars as pl

from shared.errors import DataError

__all__ = ["Column", "read_csv", "read_delimited", "require_file"]

log = logging.getLogger(__name__)

Column = tuple[str, type[pl.DataType] | pl.DataType]


def require_file(path: Path) -> Path:
    """``path`` itself, or :class:`DataError` when it is not a file."""
    if not path.is_file():
        raise DataError(path, "file not found")
    return path


def _read_text(path: Path, encoding: str) -> tuple[bytes, str]:
    """The file's bytes and its text (a leading BOM removed); bad bytes name their line."""
    raw = require_file(path).read_bytes()
    return raw, _decode(path, raw, encoding)


def _decode(path: Path, raw: bytes, encoding: str) -> str:
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(path, f"bytes not decodable as {encoding} ({e.reason})", line) from None
    return text.removeprefix("\ufeff")


def _nonblank(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr != "").then(expr)


def _cast_checked(
    frame: pl.DataFrame,
    columns: Sequence[Column],
    path: Path,
    line_of: Callable[[int], int],
    *,
    strip_strings: bool,
) -> pl.DataFrame:
    """Cast string columns to their types; a value that does not parse names its line.

    Surrounding whitespace never counts for numbers; empty values become nulls.
    """
    exprs = []
    for name, dtype in columns:
        text = pl.col(name).str.strip_chars()
        if dtype == pl.String:
            exprs.append(_nonblank(text if strip_strings else pl.col(name)))
        else:
            exprs.append(text.cast(dtype, strict=False))
    out = frame.with_columns(exprs)
    for name, dtype in columns:
        if dtype == pl.String:
            continue
        bad = out[name].is_null() & frame[name].str.strip_chars().ne("").fill_null(False)
        if bad.any():
            row = int(bad.arg_max())
            value = frame[name][row]
            raise DataError(
                path, f"column {name!r}: {value!r} is not a valid {dtype}", line_of(row)
            )
    return out


def read_delimited(
    path: Path,
    columns: Sequence[Column],
    sep: str,
    *,
    encoding: str = "utf-8",
    skip_header: bool = False,
    required: Collection[str] = (),
    line_column: str | None = None,
) -> pl.DataFrame:
    """Read a file of ``sep``-separated fields without quoting (u.data, ratings.dat…).

    Every non-blank line must have exactly ``len(columns)`` fields; numeric columns must
    parse. Blank lines are skipped; fields are stripped and empty ones become nulls,
    except in the ``required`` columns, where they are an error. ``line_column``, when
    given, names an extra column holding each row's line number.

    Raises:
        DataError: naming the file, the line and the problem.
    """
    _, text = _read_text(path, encoding)
    lines = pl.Series("line", text.split("\n"), dtype=pl.String).str.strip_suffix("\r")
    line_no = pl.int_range(1, len(lines) + 1, eager=True, dtype=pl.Int64)
    if skip_header:
        lines, line_no = lines.slice(1), line_no.slice(1)
    keep = lines.str.strip_chars().ne("")
    lines, line_no = lines.filter(keep), line_no.filter(keep)
    n_fields = lines.str.count_matches(sep, literal=True) + 1
    wrong = n_fields != len(columns)
    if wrong.any():
        row = int(wrong.arg_max())
        raise DataError(
            path,
            f"expected {len(columns)} fields separated by {sep!r}, found {n_fields[row]}",
            int(line_no[row]),
        )
    names = [name for name, _ in columns]
    parts = lines.str.split(sep, inclusive=False).list.to_struct(fields=names)
    frame = pl.DataFrame({"parts": parts}).unnest("parts")
    out = _cast_checked(frame, columns, path, lambda row: int(line_no[row]), strip_strings=True)
    if row := _first_empty(out, required):
        raise DataError(path, f"column {row[0]!r}: empty value", int(line_no[row[1]]))
    return out.with_columns(line_no.alias(line_column)) if line_column else out


def _first_empty(frame: pl.DataFrame, required: Collection[str]) -> tuple[str, int] | None:
    """The first required column holding a null, and the row of its first null."""
    for name in required:
        if frame[name].null_count():
            return name, int(frame[name].is_null().arg_max())
    return None


def read_csv(
    path: Path,
    columns: Sequence[Column],
    *,
    encoding: str = "utf-8",
    required: Collection[str] = (),
    line_column: str | None = None,
) -> pl.DataFrame:
    """Read a quoted CSV file with a header row holding at least the named columns.

    Blank lines are skipped; numbers may carry surrounding whitespace; empty fields
    become nulls, except in the ``required`` columns, where they are an error.
    ``line_column``, when given, names an extra column holding the line on which each
    row starts.

    Raises:
        DataError: naming the file, the line and the problem (missing column, wrong
            field count, unparsable or empty value, undecodable bytes).
    """
    raw = require_file(path).read_bytes()
    utf8 = encoding.replace("-", "").lower() in ("utf8", "utf8sig")
    # ASCII is valid UTF-8: skip decoding a big file unless a line-by-line pass needs it
    text = None if utf8 and raw.isascii() else _decode(path, raw, encoding)
    head = text if text is not None else raw[: 1 << 20].decode("ascii")
    header = _header(path, head, columns)
    data = raw if text is None or utf8 else text.encode()
    frame = _read_csv_fast(data, columns, header)
    lines: array[int] | None = None
    if frame is None:
        log.debug("%s: columnar read found a problem; scanning line by line", path)
        text = text if text is not None else raw.decode("ascii")
        lines, keep = _scan_csv(path, text, len(header))
        frame = _read_csv_strings(path, data, columns, len(keep))
        if not all(keep):
            frame = frame.filter(pl.Series(keep, dtype=pl.Boolean))
        frame = _cast_checked(frame, columns, path, lines.__getitem__, strip_strings=False)
    if empty := _first_empty(frame, required):
        if lines is None:
            text = text if text is not None else raw.decode("ascii")
            lines, _ = _scan_csv(path, text, len(header))
        raise DataError(path, f"column {empty[0]!r}: empty value", lines[empty[1]])
    if line_column is None:
        return frame
    if lines is None:
        physical = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        if physical == frame.height + 1:  # one line per row: no blank lines, no quoted newlines
            return frame.with_columns(
                pl.int_range(2, frame.height + 2, dtype=pl.Int64).alias(line_column)
            )
        text = text if text is not None else raw.decode("ascii")
        lines, _ = _scan_csv(path, text, len(header))
    return frame.with_columns(pl.Series(line_column, lines, dtype=pl.Int64))


def _header(path: Path, head: str, columns: Sequence[Column]) -> list[str]:
    """The header row, checked for duplicates and for every wanted column."""
    header = next(csv.reader(_iter_lines(head)), None)
    if not header:
        raise DataError(path, "file is empty or has no header row", 1)
    if len(set(header)) != len(header):
        dup = next(name for name in header if header.count(name) > 1)
        raise DataError(path, f"duplicate column {dup!r} in header", 1)
    missing = [name for name, _ in columns if name not in header]
    if missing:
        raise DataError(path, f"missing column {missing[0]!r} in header {header}", 1)
    return header


def _read_csv_fast(
    data: bytes, columns: Sequence[Column], header: list[str]
) -> pl.DataFrame | None:
    """One typed columnar read; None when the file needs a closer look.

    Polars fills the fields missing from a short row (and every field of a blank line)
    with nulls, so the header's last column is always read: a null there means a short
    row, a blank line, or a legitimately empty last field, and only a scan tells which.
    """
    last = header[-1]
    read = dict(columns)
    read.setdefault(last, pl.String)
    try:
        frame = pl.read_csv(
            data,
            columns=list(read),
            schema_overrides=read,
            infer_schema=False,
            raise_if_empty=False,
        )
    except pl.exceptions.PolarsError:
        return None
    if frame[last].null_count():
        return None
    strings = [name for name, dtype in columns if dtype == pl.String]
    return frame.select(name for name, _ in columns).with_columns(
        _nonblank(pl.col(n)) for n in strings
    )


def _iter_lines(text: str) -> Iterator[str]:
    """The lines of ``text`` with their endings, without copying it whole."""
    start, end = 0, len(text)
    while start < end:
        stop = text.find("\n", start)
        if stop < 0:
            yield text[start:]
            return
        yield text[start : stop + 1]
        start = stop + 1


def _scan_csv(path: Path, text: str, width: int) -> tuple[array[int], list[bool]]:
    """Walk the records after the header: the start line of each non-blank one, and
    which of polars' rows to keep (blank lines are rows of nulls there).

    Raises:
        DataError: on the first record whose field count is not ``width``.
    """
    reader = csv.reader(_iter_lines(text))
    starts: array[int] = array("q")
    keep: list[bool] = []
    try:
        next(reader)
        prev = reader.line_num
        for row in reader:
            start, prev = prev + 1, reader.line_num
            if not row:
                keep.append(False)
                continue
            if len(row) != width:
                raise DataError(path, f"expected {width} fields, found {len(row)}", start)
            keep.append(True)
            starts.append(start)
    except csv.Error as e:
        raise DataError(path, f"unreadable CSV ({e})", reader.line_num) from None
    return starts, keep


def _read_csv_strings(
    path: Path, data: bytes, columns: Sequence[Column], n_rows: int
) -> pl.DataFrame:
    names = [name for name, _ in columns]
    try:
        frame = pl.read_csv(data, columns=names, infer_schema=False, raise_if_empty=False)
    except pl.exceptions.PolarsError as e:
        raise DataError(path, f"unreadable CSV ({str(e).splitlines()[0]})") from None
    if frame.height != n_rows:
        raise DataError(path, f"unreadable CSV (found {frame.height} rows, expected {n_rows})")
    return frame.select(names)
