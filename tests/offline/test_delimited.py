"""The strict readers: typed happy paths, and every bad input named by file and line."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from offline.datasets import delimited
from offline.datasets.delimited import read_csv, read_delimited
from tests.conftest import raises_data_error

COLUMNS = [("a", pl.Int64), ("b", pl.String), ("c", pl.Float64)]


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- read_delimited


def test_delimited_types_blank_lines_and_empty_fields(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.dat", b"1| x |2.5\r\n\n\n2||3\n  \n3|z| 4 \n")
    frame = read_delimited(path, COLUMNS, "|", line_column="line")
    assert frame.schema == pl.Schema(
        {"a": pl.Int64, "b": pl.String, "c": pl.Float64, "line": pl.Int64}
    )
    assert frame.to_dicts() == [
        {"a": 1, "b": "x", "c": 2.5, "line": 1},
        {"a": 2, "b": None, "c": 3.0, "line": 4},
        {"a": 3, "b": "z", "c": 4.0, "line": 6},
    ]


def test_delimited_multichar_separator_latin1_and_header(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.dat", "a::b::c\n7::Café::1\n".encode("latin-1"))
    frame = read_delimited(path, COLUMNS, "::", encoding="latin-1", skip_header=True)
    assert frame.to_dicts() == [{"a": 7, "b": "Café", "c": 1.0}]


def test_delimited_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.dat", b"")
    assert read_delimited(path, COLUMNS, "|").schema == pl.Schema(dict(COLUMNS))


@pytest.mark.parametrize(
    ("data", "line", "reason"),
    [
        (b"1|x|2\n2|y\n", 2, "expected 3 fields separated by '|', found 2"),
        (b"1|x|2\n\n2|y|3|4\n", 3, "expected 3 fields separated by '|', found 4"),
        (b"1|x|2\nq|y|3\n", 2, "column 'a': 'q' is not a valid Int64"),
        (b"\n1|x|2\n\n2|y|zz\n", 4, "column 'c': 'zz' is not a valid Float64"),
        (b"1|x|2\n2.5|y|3\n", 2, "column 'a': '2.5' is not a valid Int64"),
        (b"1|x|2\n2|\xff\xfe|3\n", 2, "bytes not decodable as utf-8"),
    ],
    ids=["too-few-fields", "too-many-fields", "bad-int", "bad-float", "float-in-int", "bad-bytes"],
)
def test_delimited_bad_input(tmp_path: Path, data: bytes, line: int, reason: str) -> None:
    path = _write(tmp_path, "x.dat", data)
    e = raises_data_error(lambda: read_delimited(path, COLUMNS, "|"), path, line)
    assert e.reason.startswith(reason)


def test_delimited_bad_line_after_header(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.dat", b"a|b|c\n1|x|2\n2|y\n")
    raises_data_error(lambda: read_delimited(path, COLUMNS, "|", skip_header=True), path, 3)


def test_delimited_required_columns(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.dat", b"1|x|2\n\n2||3\n")
    assert read_delimited(path, COLUMNS, "|", required=["a", "c"]).height == 2
    e = raises_data_error(lambda: read_delimited(path, COLUMNS, "|", required=["b"]), path, 3)
    assert e.reason == "column 'b': empty value"


def test_delimited_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.dat"
    e = raises_data_error(lambda: read_delimited(path, COLUMNS, "|"), path, None)
    assert e.reason == "file not found"


# ---------------------------------------------------------------------- read_csv


def test_csv_quotes_subset_and_empty_fields(tmp_path: Path) -> None:
    data = b'c,b,extra,a\n2.5,"x, y",1,1\n,,,2\n 4 ,"multi\nline",,3\n'
    frame = read_csv(_write(tmp_path, "x.csv", data), COLUMNS)
    assert frame.schema == pl.Schema(dict(COLUMNS))
    assert frame.to_dicts() == [
        {"a": 1, "b": "x, y", "c": 2.5},
        {"a": 2, "b": None, "c": None},
        {"a": 3, "b": "multi\nline", "c": 4.0},
    ]


def test_csv_bom_crlf_blank_lines_and_line_numbers(tmp_path: Path) -> None:
    data = b'\xef\xbb\xbfa,b,c\r\n1,x,2\r\n\r\n2,"y\r\nz",3\r\n3,w,4\r\n\r\n'
    frame = read_csv(_write(tmp_path, "x.csv", data), COLUMNS, line_column="line")
    assert frame["a"].to_list() == [1, 2, 3]
    assert frame["line"].to_list() == [2, 4, 6]


def test_csv_line_numbers_on_clean_file(tmp_path: Path) -> None:
    frame = read_csv(_write(tmp_path, "x.csv", b"a,b,c\n1,x,2\n2,y,3"), COLUMNS, line_column="n")
    assert frame["n"].to_list() == [2, 3]


def test_csv_latin1(tmp_path: Path) -> None:
    data = "a,b,c\n1,Café,2\n".encode("latin-1")
    frame = read_csv(_write(tmp_path, "x.csv", data), COLUMNS, encoding="latin-1")
    assert frame["b"].to_list() == ["Café"]


def test_csv_header_only(tmp_path: Path) -> None:
    frame = read_csv(_write(tmp_path, "x.csv", b"a,b,c\n"), COLUMNS)
    assert frame.height == 0
    assert frame.schema == pl.Schema(dict(COLUMNS))


def test_csv_clean_file_is_read_without_a_line_by_line_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def scan(*args: object) -> None:
        raise AssertionError("a clean file must not be scanned line by line")

    monkeypatch.setattr(delimited, "_scan_csv", scan)
    data = b'a,b,c\n1,"x,y",2\n2,z,3\n'
    assert read_csv(_write(tmp_path, "x.csv", data), COLUMNS, line_column="line").height == 2


@pytest.mark.parametrize(
    ("data", "line", "reason"),
    [
        (b"a,b,c\n1,x,2\n2,y\n", 3, "expected 3 fields, found 2"),
        (b"a,b,c\n1,x,2\n3\n4,z,5\n", 3, "expected 3 fields, found 1"),
        (b'a,b,c\n1,"x\ny",2\n2,y\n', 4, "expected 3 fields, found 2"),
        (b"a,b,c\n1,x,\n2,y\n", 3, "expected 3 fields, found 2"),
        (b"a,b,c\n1,x,2\n\n2,y,3,4\n", 4, "expected 3 fields, found 4"),
        (b"a,b,c\n1,x,2\n\nq,y,3\n", 4, "column 'a': 'q' is not a valid Int64"),
        (b"a,b,c\n1,x,2\n2,y,zz\n", 3, "column 'c': 'zz' is not a valid Float64"),
        (b'a,b,c\n1,"x\ny",\n2,y,zz\n', 4, "column 'c': 'zz' is not a valid Float64"),
        (b"a,b,c\n1,x,2\n2,\xff\xfe,3\n", 3, "bytes not decodable as utf-8"),
        (b"a,b\n1,2\n", 1, "missing column 'c'"),
        (b"a,b,a,c\n1,2,3,4\n", 1, "duplicate column 'a'"),
        (b"", 1, "file is empty"),
    ],
    ids=[
        "too-few-fields",
        "one-field",
        "too-few-after-quoted-newline",
        "too-few-with-empty-last-fields",
        "too-many-fields",
        "bad-int",
        "bad-float-last-column",
        "bad-float-after-quoted-newline",
        "bad-bytes",
        "missing-column",
        "duplicate-column",
        "empty-file",
    ],
)
def test_csv_bad_input(tmp_path: Path, data: bytes, line: int, reason: str) -> None:
    path = _write(tmp_path, "x.csv", data)
    e = raises_data_error(lambda: read_csv(path, COLUMNS), path, line)
    assert e.reason.startswith(reason)


@pytest.mark.parametrize(
    ("data", "line"),
    [(b"a,b,c\n1,x,2\n2,,3\n", 3), (b'a,b,c\n1,"x\ny",2\n\n2,,3\n', 5)],
    ids=["one-line-rows", "quoted-newline-and-blank-line"],
)
def test_csv_required_columns(tmp_path: Path, data: bytes, line: int) -> None:
    path = _write(tmp_path, "x.csv", data)
    assert read_csv(path, COLUMNS, required=["a", "c"]).height == 2
    e = raises_data_error(lambda: read_csv(path, COLUMNS, required=["b"]), path, line)
    assert e.reason == "column 'b': empty value"


def test_csv_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    e = raises_data_error(lambda: read_csv(path, COLUMNS), path, None)
    assert e.reason == "file not found"
