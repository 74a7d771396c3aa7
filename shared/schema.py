"""Canonical tables and the spec that describes them.

Every dataset adapter returns a :class:`Dataset`:

- ``interactions``: ``user_id: str, item_id: str, ts: int`` (unix seconds) plus one
  column per label named in ``spec.tasks`` (and, optionally, ``spec.oracle_column``).
- ``users``: ``user_id: str`` plus the user feature columns named in ``spec.features``.
- ``items``: ``item_id: str`` plus the item feature columns.

Context features describe one impression (where and how it was shown: ``page``,
``position``, ``device``, the ``anchor`` item of a "more like this" row): columns of
``interactions``, nullable (null: not known), categorical, numeric, or ``item`` (an
item id whose features the ranker reads). The hour and day of week are context too,
derived from ``ts`` (:data:`CONTEXT_FEATURES`).

Categorical features are strings, numeric features floats, multi-hot features
``list[str]``, pretrained vectors ``list[f32]``. The spec is what ETL, training and
serving read to know what each column means; nothing downstream guesses from dtypes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

import polars as pl

from shared.errors import ConfigError, DataError

__all__ = [
    "CLOCK_FEATURES",
    "CONTEXT_FEATURES",
    "FEATURE_DTYPES",
    "Dataset",
    "DatasetSpec",
    "Feature",
    "FeatureKind",
    "Task",
    "TaskKind",
    "WEEKEND_DAYS",
    "clock_values",
]

Owner = Literal["user", "item", "context"]


class FeatureKind(StrEnum):
    CATEGORICAL = "categorical"
    NUMERIC = "numeric"
    MULTI_HOT = "multi_hot"
    VECTOR = "vector"
    ITEM = "item"  # context only: an item id (the anchor), read through the item's features


class TaskKind(StrEnum):
    BINARY = "binary"
    REGRESSION = "regression"


@dataclass(frozen=True, kw_only=True)
class Feature:
    """One feature column of the ``users`` or ``items`` table, or a context column of
    ``interactions``.

    Context features only: ``default`` is the value serving uses when a request does not
    give one (None: out-of-vocabulary). ``position`` marks the slot an item was shown in:
    the ranker learns its effect from the logs, and evaluation scores every candidate at
    the default slot (as ``/recommend`` does), so lists are ordered by relevance, not by
    where items happened to be shown.
    """

    name: str
    kind: FeatureKind
    owner: Owner
    default: str | None = None
    position: bool = False


@dataclass(frozen=True, kw_only=True)
class Task:
    """One label column of ``interactions`` that the ranker learns.

    ``parent`` chains funnel tasks: the ranker predicts p(task | parent) and the served
    probability is p(parent) * p(task | parent). ``weight`` is the task's weight in the
    training loss; ``score_weight`` its weight in the final ranking score.
    """

    name: str
    kind: TaskKind = TaskKind.BINARY
    parent: str | None = None
    weight: float = 1.0
    score_weight: float = 1.0


# Context features derived from each interaction's timestamp, at training and serving time:
# always the hour and the day of week (0 = Monday); is_weekend when ETL is asked for it.
CONTEXT_FEATURES: tuple[str, ...] = ("hour", "dow")
CLOCK_FEATURES: tuple[str, ...] = (*CONTEXT_FEATURES, "is_weekend")
WEEKEND_DAYS = (5, 6)  # dow of Saturday, Sunday


def clock_values(hour: int, dow: int) -> dict[str, str]:
    """The clock features' raw values at one moment (what the feature map encodes)."""
    return {"hour": str(hour), "dow": str(dow), "is_weekend": str(int(dow in WEEKEND_DAYS))}


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """What the columns of a :class:`Dataset` mean.

    Args:
        name: the source's name (``synthetic``, ``movielens-100k``…).
        features: user and item feature columns (ids excluded).
        tasks: label columns of ``interactions``, parents before children.
        implicit: True when ``interactions`` holds only what users chose (MovieLens):
            training then samples non-interacted items as negative impressions and
            adds the task ``interact``. False when rows are impressions with labels.
        positive_label: the label that makes an impression a positive for retrieval
            (``None`` for implicit data: every interaction is one).
        oracle_column: a column of true probabilities of the first task, never a
            feature, for reporting the best AUC any model could reach.
    """

    name: str
    features: tuple[Feature, ...] = ()
    tasks: tuple[Task, ...] = ()
    implicit: bool = False
    positive_label: str | None = None
    oracle_column: str | None = None
    clock: tuple[str, ...] = CONTEXT_FEATURES  # the context features taken from ts

    def __post_init__(self) -> None:
        if self.clock[:2] != CONTEXT_FEATURES or not set(self.clock) <= set(CLOCK_FEATURES):
            raise ConfigError(f"clock features {self.clock}: hour, dow, then of {CLOCK_FEATURES}")
        names = [t.name for t in self.tasks]
        for i, task in enumerate(self.tasks):
            if (
                task.parent is not None
                and task.parent not in names[:i]
                and not (self.implicit and task.parent == "interact")
            ):
                raise ConfigError(
                    f"task {task.name!r}: parent {task.parent!r} is not an earlier task"
                )
        context = self.features_of("context")
        for f in self.features:
            if f.owner == "context" and f.kind in (FeatureKind.MULTI_HOT, FeatureKind.VECTOR):
                raise ConfigError(f"context feature {f.name!r}: {f.kind} is not a context kind")
            if f.owner != "context" and (
                f.kind == FeatureKind.ITEM or f.default is not None or f.position
            ):
                raise ConfigError(f"feature {f.name!r}: only context features have "
                                  "kind item, a default or position")  # fmt: skip
            if f.position and (f.kind != FeatureKind.CATEGORICAL or f.default is None):
                raise ConfigError(f"position feature {f.name!r}: categorical, with a default slot")
            if f.name in CLOCK_FEATURES:
                raise ConfigError(f"feature {f.name!r}: derived from ts, not a column")
        if sum(f.kind == FeatureKind.ITEM for f in context) > 1:
            raise ConfigError(f"dataset {self.name!r}: at most one anchor (item) context feature")
        if not self.implicit and self.positive_label is None:
            raise ConfigError(f"dataset {self.name!r}: impressions need a positive_label")

    def features_of(self, owner: Owner, kind: FeatureKind | None = None) -> list[Feature]:
        return [f for f in self.features if f.owner == owner and (kind is None or f.kind == kind)]

    @property
    def anchor(self) -> str | None:
        """The context feature naming an anchor item, if any."""
        return next((f.name for f in self.features_of("context", FeatureKind.ITEM)), None)

    @property
    def label_columns(self) -> list[str]:
        return [t.name for t in self.tasks]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSpec:
        return cls(
            name=data["name"],
            features=tuple(
                Feature(**{**f, "kind": FeatureKind(f["kind"])}) for f in data.get("features", ())
            ),
            tasks=tuple(Task(**{**t, "kind": TaskKind(t["kind"])}) for t in data.get("tasks", ())),
            implicit=data.get("implicit", False),
            positive_label=data.get("positive_label"),
            oracle_column=data.get("oracle_column"),
            clock=tuple(data.get("clock", CONTEXT_FEATURES)),
        )


FEATURE_DTYPES = {
    FeatureKind.CATEGORICAL: pl.String,
    FeatureKind.NUMERIC: pl.Float64,
    FeatureKind.MULTI_HOT: pl.List(pl.String),
    FeatureKind.VECTOR: pl.List(pl.Float32),
    FeatureKind.ITEM: pl.String,
}


@dataclass(kw_only=True)
class Dataset:
    """The canonical tables of one source, checked against their spec."""

    interactions: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame
    spec: DatasetSpec
    source: str = field(default="")  # the path the tables were read from, for error messages
    # the generator the tables came from, if any: {"synthetic": its options} (data logged
    # on a bundle trained on it inherits it), so evaluation can price lists by the truth
    origin: dict[str, Any] | None = None

    def validate(self) -> Dataset:
        """Check columns and dtypes; raise :class:`DataError` naming what is wrong."""
        where = self.source or self.spec.name
        need = {"user_id": pl.String, "item_id": pl.String, "ts": pl.Int64}
        need |= {t.name: pl.Float64 for t in self.spec.tasks}
        if self.spec.oracle_column:
            need[self.spec.oracle_column] = pl.Float64
        need |= {f.name: FEATURE_DTYPES[f.kind] for f in self.spec.features_of("context")}
        _check_columns(self.interactions, need, where, "interactions")
        for owner, table in (("user", self.users), ("item", self.items)):
            cols = {f"{owner}_id": pl.String}
            cols |= {f.name: FEATURE_DTYPES[f.kind] for f in self.spec.features_of(owner)}
            _check_columns(table, cols, where, f"{owner}s")
            if table[f"{owner}_id"].is_duplicated().any():
                dup = table.filter(table[f"{owner}_id"].is_duplicated())[f"{owner}_id"][0]
                raise DataError(where, f"{owner}s table: duplicate {owner}_id {dup!r}")
        return self


def _check_columns(df: pl.DataFrame, need: dict[str, Any], where: str, table: str) -> None:
    for name, dtype in need.items():
        if name not in df.columns:
            raise DataError(where, f"{table} table: missing column {name!r}")
        if df.schema[name] != dtype:
            raise DataError(
                where, f"{table} table: column {name!r} is {df.schema[name]}, expected {dtype}"
            )
