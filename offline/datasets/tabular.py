"""A generic source: CSV or Parquet tables described by a small YAML schema.

The schema (``schema.yaml`` in the data directory, or the ``schema`` option) names the
files, the source columns and what each one means; file paths are relative to the data
directory::

    name: shop-logs                    # optional, the spec's name
    implicit: false
    positive_label: click
    interactions:
      path: impressions.parquet        # .csv or .parquet
      user_id: uid                     # source column names (defaults: user_id, item_id, ts)
      item_id: iid
      ts: event_time                   # unix seconds (ts_unit: ms for milliseconds)
      labels:                          # parents before children
        click: {}                      # column defaults to the label's name
        purchase: {column: bought, parent: click, score_weight: 4}
        dwell: {kind: regression, weight: 0.2, score_weight: 0}
      context:                         # optional: per impression, nullable
        page: {kind: categorical, default: home}        # served when a request gives none
        slot: {kind: categorical, column: pos, default: "0", position: true}
        anchor: {kind: item, column: anchor_iid}        # the row's "more like this" item
        price_shown: {kind: numeric}
    users:                             # optional, like items
      path: users.csv
      id: uid                          # defaults to interactions.user_id
      features:
        age: {kind: numeric}
        city: {kind: categorical, column: city_name}
        interests: {kind: multi_hot, separator: "|"}    # a list column in Parquet
    items:
      path: items.parquet
      features:
        category: {kind: categorical}

Users and items seen in interactions but absent from their table get null features.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, NoReturn

import polars as pl
from pydantic import Field

from offline.datasets.delimited import read_csv, require_file
from offline.datasets.tables import require_unique, with_all_ids
from shared.config import StrictConfig, build, load_yaml
from shared.errors import ConfigError, DataError
from shared.schema import (
    CLOCK_FEATURES,
    Dataset,
    DatasetSpec,
    Feature,
    FeatureKind,
    Task,
    TaskKind,
)

__all__ = [
    "ContextSpec",
    "FeatureSpec",
    "InteractionsSpec",
    "LabelSpec",
    "TableSpec",
    "TabularConfig",
    "TabularSchema",
    "load",
]

log = logging.getLogger(__name__)

_LINE = "__line__"  # the reader's line-number column, dropped before returning


class FeatureSpec(StrictConfig):
    kind: FeatureKind
    column: str | None = None  # the source column; defaults to the feature's name
    separator: str = Field("|", min_length=1)  # multi_hot / vector values in one CSV field


class LabelSpec(StrictConfig):
    column: str | None = None  # the source column; defaults to the label's name
    kind: TaskKind = TaskKind.BINARY
    parent: str | None = None
    weight: float = 1.0
    score_weight: float = 1.0


class ContextSpec(StrictConfig):
    kind: Literal[FeatureKind.CATEGORICAL, FeatureKind.NUMERIC, FeatureKind.ITEM]
    column: str | None = None  # the source column; defaults to the feature's name
    default: str | None = None  # served when a request does not give one
    position: bool = False  # the slot an item was shown in (scored at its default)


class InteractionsSpec(StrictConfig):
    path: str
    user_id: str = "user_id"
    item_id: str = "item_id"
    ts: str = "ts"
    ts_unit: Literal["s", "ms"] = "s"
    labels: dict[str, LabelSpec] = Field(default_factory=dict)
    context: dict[str, ContextSpec] = Field(default_factory=dict)


class TableSpec(StrictConfig):
    path: str
    id: str | None = None  # the id column; defaults to the one named in interactions
    features: dict[str, FeatureSpec] = Field(default_factory=dict)


class TabularSchema(StrictConfig):
    name: str = "tabular"
    interactions: InteractionsSpec
    users: TableSpec | None = None
    items: TableSpec | None = None
    implicit: bool = False
    positive_label: str | None = None


class TabularConfig(StrictConfig):
    """Dataset options: ``schema``, the YAML schema's path (default: ``schema.yaml``
    in the data directory)."""

    schema_path: str | None = Field(None, alias="schema")


def load(data_dir: Path, config: TabularConfig) -> Dataset:
    """Read the tables the schema names and map them onto the canonical ones."""
    schema_path = Path(config.schema_path) if config.schema_path else data_dir / "schema.yaml"
    schema = build(TabularSchema, load_yaml(schema_path), str(schema_path))
    spec = _spec(schema, schema_path)
    inter = schema.interactions
    path = data_dir / inter.path
    cols = {inter.user_id: "id", inter.item_id: "id", inter.ts: "ts"}
    cols |= {label.column or name: "label" for name, label in inter.labels.items()}
    cols |= {c.column or name: c.kind.value for name, c in inter.context.items()}
    frame = _read_table(path, cols, {})
    _require_values(frame, [c for c, role in cols.items() if role in ("id", "ts", "label")], path)
    ts = pl.col(inter.ts) // 1000 if inter.ts_unit == "ms" else pl.col(inter.ts)
    interactions = frame.select(
        pl.col(inter.user_id).alias("user_id"),
        pl.col(inter.item_id).alias("item_id"),
        ts.alias("ts"),
        *(pl.col(label.column or name).alias(name) for name, label in inter.labels.items()),
        *(pl.col(c.column or name).alias(name) for name, c in inter.context.items()),
    )
    users = _entities(data_dir, schema.users, inter.user_id, "user_id", interactions["user_id"])
    items = _entities(data_dir, schema.items, inter.item_id, "item_id", interactions["item_id"])
    return Dataset(
        interactions=interactions, users=users, items=items, spec=spec, source=str(data_dir)
    )


def _spec(schema: TabularSchema, where: Path) -> DatasetSpec:
    labels = schema.interactions.labels
    if schema.positive_label is not None and schema.positive_label not in labels:
        raise ConfigError(f"{where}: positive_label {schema.positive_label!r} is not a label")
    taken = {"user_id", "item_id", "ts"}
    if clash := taken & set(labels):
        raise ConfigError(f"{where}: interactions.labels.{clash.pop()}: name already used")
    taken |= {*CLOCK_FEATURES, *labels}
    features: list[Feature] = []
    for name, c in schema.interactions.context.items():
        if name in taken:
            raise ConfigError(f"{where}: interactions.context.{name}: name already used")
        taken.add(name)
        features.append(Feature(name=name, owner="context",
                                **c.model_dump(exclude={"column"})))  # fmt: skip
    for owner, table in (("user", schema.users), ("item", schema.items)):
        for name, feature in (table.features if table else {}).items():
            if name in taken:
                raise ConfigError(f"{where}: {owner}s.features.{name}: name already used")
            taken.add(name)
            features.append(Feature(name=name, kind=feature.kind, owner=owner))
    try:
        return DatasetSpec(
            name=schema.name,
            features=tuple(features),
            tasks=tuple(
                Task(name=n, **t.model_dump(exclude={"column"})) for n, t in labels.items()
            ),
            implicit=schema.implicit,
            positive_label=schema.positive_label,
        )
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _entities(
    data_dir: Path, table: TableSpec | None, default_id: str, key: str, seen: pl.Series
) -> pl.DataFrame:
    """The users or items table: its file's rows, then ids only seen in interactions."""
    if table is None:
        return pl.DataFrame({key: seen.unique(maintain_order=True)})
    path = data_dir / table.path
    id_col = table.id or default_id
    features = table.features
    cols = {id_col: "id"} | {f.column or name: f.kind.value for name, f in features.items()}
    frame = _read_table(path, cols, {f.column or n: f.separator for n, f in features.items()})
    _require_values(frame, [id_col], path)
    frame = frame.with_columns(pl.col(id_col).alias(key))
    require_unique(frame, key, path, _LINE if _LINE in frame.columns else None)
    out = frame.select(key, *(pl.col(f.column or name).alias(name) for name, f in features.items()))
    return with_all_ids(out, seen, key)


# what each role reads as: CSV columns are read typed, then split or converted
_CSV_TYPES: dict[str, type[pl.DataType]] = {
    "id": pl.String,
    "categorical": pl.String,
    "numeric": pl.Float64,
    "label": pl.Float64,
    "ts": pl.Int64,
    "multi_hot": pl.String,
    "vector": pl.String,
    "item": pl.String,
}
_TARGET = {
    "id": pl.String,
    "categorical": pl.String,
    "numeric": pl.Float64,
    "label": pl.Float64,
    "ts": pl.Int64,
    "multi_hot": pl.List(pl.String),
    "vector": pl.List(pl.Float32),
    "item": pl.String,
}


def _read_table(path: Path, cols: dict[str, str], separators: dict[str, str]) -> pl.DataFrame:
    """Read ``cols`` (source column → role) from a CSV or Parquet file, typed by role.

    CSV frames carry the line each row starts on (``_LINE``) for error messages.
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame = read_csv(path, [(c, _CSV_TYPES[r]) for c, r in cols.items()], line_column=_LINE)
    elif suffix in (".parquet", ".pq"):
        frame = _read_parquet(path, cols)
    else:
        raise ConfigError(f"{path}: unknown file type {path.suffix!r}; use .csv or .parquet")
    exprs = []
    for col, role in cols.items():
        if role in ("multi_hot", "vector") and frame.schema[col] == pl.String:
            values = pl.element().str.strip_chars()
            parts = pl.col(col).str.split(separators[col]).list.eval(values.filter(values != ""))
            if role == "multi_hot":  # no values: an empty list; no vector: null
                exprs.append(parts.fill_null(pl.lit([], dtype=pl.List(pl.String))))
            else:
                exprs.append(pl.when(parts.list.len() > 0).then(parts))
    frame = frame.with_columns(exprs)
    frame = frame.with_columns(_convert(frame, col, role, path) for col, role in cols.items())
    frame = frame.with_columns(
        pl.col(c).list.drop_nulls() for c, r in cols.items() if r == "multi_hot"
    )
    for col in (c for c, role in cols.items() if role == "vector"):
        lengths = frame[col].list.len()
        known = lengths.drop_nulls()
        if known.len() and (wrong := (lengths != known[0]).fill_null(False)).any():
            row = int(wrong.arg_max())
            _fail(path, frame, row, f"column {col!r}: {lengths[row]} values, expected {known[0]}")
    return frame


def _read_parquet(path: Path, cols: dict[str, str]) -> pl.DataFrame:
    require_file(path)
    try:
        schema = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DataError(path, f"not a readable Parquet file ({str(e).splitlines()[0]})") from None
    missing = [c for c in cols if c not in schema]
    if missing:
        raise DataError(path, f"missing column {missing[0]!r} (columns: {', '.join(schema)})")
    try:
        return pl.read_parquet(path, columns=list(cols))
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DataError(path, f"not a readable Parquet file ({str(e).splitlines()[0]})") from None


def _convert(frame: pl.DataFrame, col: str, role: str, path: Path) -> pl.Series:
    """``frame[col]`` cast to its role's dtype; a value that will not cast names its row."""
    target = _TARGET[role]
    series = frame[col]
    if series.dtype == target:
        return series
    if role == "ts" and series.dtype.is_temporal() and series.dtype != pl.Time:
        return series.dt.epoch("s").alias(col)
    nested = isinstance(target, pl.List)
    if nested != isinstance(series.dtype, pl.List | pl.Array):
        shape = "a list" if nested else "a scalar"
        raise DataError(path, f"column {col!r} is {series.dtype}, expected {shape} ({target})")
    try:
        source = series.str.strip_chars() if series.dtype == pl.String else series
        cast = source.cast(target, strict=False)
    except pl.exceptions.PolarsError:
        raise DataError(path, f"column {col!r} is {series.dtype}, cannot become {target}") from None
    if nested:  # bad when an element turned null
        bad = _null_elements(cast) > _null_elements(series)
    elif series.dtype == pl.String:
        bad = cast.is_null() & series.str.strip_chars().ne("").fill_null(False)
    else:
        bad = cast.is_null() & series.is_not_null()
    if bad.any():
        row = int(bad.arg_max())
        value = series[row].to_list() if nested else series[row]
        _fail(path, frame, row, f"column {col!r}: {value!r} is not a valid {target}")
    return cast


def _null_elements(lists: pl.Series) -> pl.Series:
    return lists.list.eval(pl.element().is_null().sum()).list.first().fill_null(0)


def _require_values(frame: pl.DataFrame, cols: list[str], path: Path) -> None:
    """Ids, timestamps and labels may not be empty."""
    for col in cols:
        null = frame[col].is_null()
        if null.any():
            _fail(path, frame, int(null.arg_max()), f"column {col!r}: empty value")


def _fail(path: Path, frame: pl.DataFrame, row: int, reason: str) -> NoReturn:
    """Raise :class:`DataError` at ``row``: its line in a CSV file, its number in Parquet."""
    if _LINE in frame.columns:
        raise DataError(path, reason, int(frame[_LINE][row]))
    raise DataError(path, f"{reason} (row {row + 1})")
