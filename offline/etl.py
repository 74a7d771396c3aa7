"""ETL: canonical tables → split, feature map, aggregates, hotness, encoded tables.

Everything is columnar (polars expressions over whole columns); no Python loop runs
per interaction. The outputs, written into a bundle by :func:`write`:

- ``interactions.parquet``: one row per interaction with ``split`` (train / valid /
  test), ``user_idx``, ``item_idx`` (1-based rows of the tables; 0 means unknown),
  ``hour``, ``dow``, the raw context columns and the labels, and each context feature
  encoded as ``ctx_<name>`` (slots; standardised numerics; the anchor's item row).
- ``users.parquet`` / ``items.parquet``: raw features, their encoded slots
  (``slot_<col>``, lists for multi-hot), standardised numerics (``num_<col>``),
  train-split aggregates, and for users the recent-item ``history`` slots (over every
  split: what serving sees; training and evaluation build causal ones); items
  also carry ``hotness`` (time-decayed positives) and ``hot_score``.
- ``feature_map.json``, ``spec.json`` and ``etl.json`` (counts and sizes).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, PositiveInt

from offline.datasets.tables import with_all_ids
from offline.embeddings import AlsConfig, TextConfig, als_vectors, text_vectors
from shared.bundle import Bundle, Files
from shared.config import StrictConfig
from shared.errors import ConfigError
from shared.feature_map import FeatureMap
from shared.features import ContextLayout
from shared.schema import (
    CLOCK_FEATURES,
    WEEKEND_DAYS,
    Dataset,
    DatasetSpec,
    Feature,
    FeatureKind,
    TaskKind,
    clock_values,
)

__all__ = [
    "EtlConfig",
    "EtlResult",
    "cold_item_split",
    "encode_context",
    "hotness",
    "kcore",
    "limited",
    "run",
    "temporal_split",
    "write",
]

log = logging.getLogger(__name__)


class EtlConfig(StrictConfig):
    valid_frac: float = Field(0.1, ge=0, lt=0.5)
    test_frac: float = Field(0.1, gt=0, lt=0.5)
    cold_items: float = Field(
        0.0, ge=0, lt=0.5,
        description="share of items, the newest by first interaction, whose every "
        "interaction is held out for test: a cold-item split (their ids are never trained)",
    )  # fmt: skip
    min_user_interactions: int = Field(0, ge=0, description="k-core: users with fewer are dropped")
    min_item_interactions: int = Field(0, ge=0, description="k-core: items with fewer are dropped")
    min_count: int = Field(1, ge=1, description="values seen fewer times map to OOV")
    max_vocab: int | None = Field(
        None, ge=1, description="each categorical feature keeps its most frequent values; "
        "the rest map to OOV (ids excepted)",
    )  # fmt: skip
    split: Literal["fraction", "leave_one_out"] = Field(
        "fraction", description="held out per user: the latest test_frac / valid_frac, or "
        "the last interaction for test and the one before for validation",
    )  # fmt: skip
    max_interactions: int | None = Field(
        None, ge=1, description="keep only the latest this many interactions (large logs)"
    )
    max_items: int | None = Field(
        None, ge=1, description="keep only the interactions of the most interacted-with items"
    )
    items_without_metadata: Literal["keep", "drop"] = Field(
        "keep", description="drop: interactions whose item has no feature in the items table"
    )
    hash_buckets: dict[str, PositiveInt] = Field(
        {}, description="the hashing trick: each named categorical or multi-hot feature's "
        "values hashed into this many buckets instead of a vocabulary (high cardinality)",
    )  # fmt: skip
    derived: list[Literal["is_weekend", "rating_std", "title_stats"]] = Field(
        [], description="extra derived features: is_weekend (a clock context feature), "
        "rating_std (the standard deviation of each user's and item's ratings), title_stats "
        "(the words and characters of each item's title)",
    )  # fmt: skip
    max_multi_hot: int = Field(8, ge=1)
    history_len: int = Field(20, ge=1)
    hot_half_life_days: float = Field(7.0, gt=0)
    ctr_prior_strength: float = Field(20.0, ge=0)
    text: TextConfig = TextConfig()  # item text embedded as the vector feature "text"
    als: AlsConfig = AlsConfig()  # ALS factors as the user and item vector features "als"


@dataclass
class EtlResult:
    interactions: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame
    feature_map: FeatureMap
    spec: DatasetSpec
    stats: dict[str, Any]


def kcore(interactions: pl.DataFrame, min_user: int, min_item: int) -> pl.DataFrame:
    """Iteratively drop users and items with too few interactions until none is left."""
    if min_user <= 1 and min_item <= 1:
        return interactions
    while True:
        before = interactions.height
        interactions = interactions.filter(
            (pl.len().over("user_id") >= min_user) & (pl.len().over("item_id") >= min_item)
        )
        if interactions.height == before:
            return interactions


def temporal_split(
    interactions: pl.DataFrame, valid_frac: float, test_frac: float, leave_one_out: bool = False
) -> pl.DataFrame:
    """Add ``split``: each user's latest interactions are valid, then test.

    A user with n ≥ 3 interactions holds out max(1, ⌊n·test_frac⌋) for test and
    max(1, ⌊n·valid_frac⌋) (or none when ``valid_frac`` is 0) before those for
    validation; ``leave_one_out``: one for test and one (none when ``valid_frac`` is 0)
    for validation. Interactions sharing a timestamp with a held-out one are held out too,
    so that a held-out interaction is strictly later than the user's training ones —
    as long as that keeps the held-out part within twice its share. Beyond that (coarse,
    e.g. day-level, timestamps, where a whole day ties the boundary) ties are broken by
    the source's own order, deterministically, so the split keeps its shares.
    """
    n = pl.len().over("user_id")
    from_end = n - 1 - pl.int_range(pl.len()).over("user_id")
    eligible = n >= 3
    n_test = pl.lit(1) if leave_one_out else pl.max_horizontal((n * test_frac).floor(), pl.lit(1))
    n_valid = (
        pl.lit(0) if valid_frac <= 0
        else pl.lit(1) if leave_one_out
        else pl.max_horizontal((n * valid_frac).floor(), pl.lit(1))
    )  # fmt: skip

    def held_out(count: pl.Expr) -> pl.Expr:
        cut = pl.col("ts").filter(eligible & (from_end < count)).min().over("user_id")
        tied = pl.col("ts") >= cut
        whole_ties = tied.sum().over("user_id") <= 2 * count
        return eligible & pl.when(whole_ties).then(tied).otherwise(from_end < count)

    df = interactions.sort(["user_id", "ts"], maintain_order=True)
    split = (
        pl.when(held_out(n_test))
        .then(pl.lit("test"))
        .when(held_out(n_test + n_valid))
        .then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
    )
    return df.with_columns(split=split)


def limited(dataset: Dataset, config: EtlConfig) -> pl.DataFrame:
    """The interactions ETL keeps: of items with metadata (``items_without_metadata:
    drop``), of the ``max_items`` most interacted-with items, the latest
    ``max_interactions``."""
    inter = dataset.interactions
    features = [f.name for f in dataset.spec.features_of("item")]
    if config.items_without_metadata == "drop" and features:
        known = dataset.items.filter(pl.any_horizontal(pl.col(features).is_not_null()))
        inter = inter.filter(pl.col("item_id").is_in(known["item_id"].implode()))
    if config.max_items is not None:
        top = inter.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
        inter = inter.filter(
            pl.col("item_id").is_in(top.head(config.max_items)["item_id"].implode())
        )
    if config.max_interactions is not None:  # the latest, in their own order
        inter = (
            inter.with_row_index("_row")
            .sort(["ts", "_row"], descending=True)
            .head(config.max_interactions)
            .sort("_row")
            .drop("_row")
        )
    return inter


def cold_item_split(
    interactions: pl.DataFrame,
    valid_frac: float,
    test_frac: float,
    cold_items: float,
    leave_one_out: bool = False,
) -> pl.DataFrame:
    """:func:`temporal_split`, after holding out every interaction of the newest
    ``cold_items`` share of items (by first interaction; none when 0) for test, and of
    the as many next newest for validation (what tunes the new items' content prior)."""
    if cold_items <= 0:
        return temporal_split(interactions, valid_frac, test_frac, leave_one_out)
    first = interactions.group_by("item_id").agg(pl.col("ts").min()).sort("ts", "item_id")
    n_cold = max(1, round(first.height * cold_items))
    held = first.tail(2 * n_cold).with_columns(
        split=pl.when(pl.int_range(pl.len()) < pl.len() - n_cold)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("test"))
    )
    cold = interactions.join(held.select("item_id", "split"), on="item_id")
    warm = interactions.join(held, on="item_id", how="anti")
    warm = temporal_split(warm, valid_frac, test_frac, leave_one_out)
    return pl.concat([warm, cold.select(warm.columns)]).sort(["user_id", "ts"], maintain_order=True)


def hotness(
    train: pl.DataFrame, positive: pl.Expr, half_life_days: float, prior_strength: float
) -> pl.DataFrame:
    """Per item: time-decayed positives, Bayesian-smoothed CTR and the hot score.

    decay(t) = 2^(−(T − t)/half_life), T the latest training timestamp;
    hotness = Σ_positives decay; ctr = (pos + m·p̄)/(impressions + m) with p̄ the global
    positive rate and m = ``prior_strength``; hot_score = Σ_impressions decay · ctr, so
    items with few impressions are pulled towards the average before ranking.
    """
    t_end = train["ts"].max()
    decay = (-(math.log(2) / (half_life_days * 86_400.0)) * (t_end - pl.col("ts"))).exp()
    prior = float(train.select(positive.mean()).item()) if train.height else 0.0
    return (
        train.group_by("item_id")
        .agg(
            n=pl.len(),
            pos=positive.sum(),
            hotness=(decay * positive).sum(),
            decayed=decay.sum(),
        )
        .with_columns(ctr=(pl.col("pos") + prior_strength * prior) / (pl.col("n") + prior_strength))
        .with_columns(hot_score=pl.col("decayed") * pl.col("ctr"))
        .drop("decayed")
    )


def _with_context(interactions: pl.DataFrame) -> pl.DataFrame:
    when = pl.from_epoch("ts", time_unit="s")
    return interactions.with_columns(
        hour=when.dt.hour().cast(pl.Int64), dow=(when.dt.weekday() - 1).cast(pl.Int64)
    )


def _derived(
    items: pl.DataFrame, spec: DatasetSpec, config: EtlConfig
) -> tuple[pl.DataFrame, DatasetSpec]:
    """The spec and items table with the ``derived`` features that are not aggregates:
    the ``is_weekend`` clock feature, and the item's ``title_words`` / ``title_chars``."""
    if "is_weekend" in config.derived:
        spec = replace(spec, clock=CLOCK_FEATURES)
    if "title_stats" in config.derived:
        if "title" not in items.columns:
            raise ConfigError(
                f"etl.derived title_stats: the items of dataset {spec.name!r} have no "
                f"title column (columns: {', '.join(items.columns)})"
            )
        title = pl.col("title").cast(pl.String).fill_null("")
        items = items.with_columns(
            title_words=title.str.count_matches(r"\S+").cast(pl.Float64),
            title_chars=title.str.len_chars().cast(pl.Float64),
        )
        numbers = [Feature(name=n, kind=FeatureKind.NUMERIC, owner="item")
                   for n in ("title_words", "title_chars")]  # fmt: skip
        spec = _with_features(spec, numbers)
    return items, spec


def _with_features(spec: DatasetSpec, added: list[Feature]) -> DatasetSpec:
    """``spec`` with the features ETL computes that it does not have yet (a retrain's spec
    already has them)."""
    have = {(f.name, f.owner) for f in spec.features}
    new = tuple(f for f in added if (f.name, f.owner) not in have)
    return replace(spec, features=(*spec.features, *new))


def _pretrained(
    users: pl.DataFrame,
    items: pl.DataFrame,
    train: pl.DataFrame,
    positive: pl.Expr,
    spec: DatasetSpec,
    config: EtlConfig,
) -> tuple[pl.DataFrame, pl.DataFrame, DatasetSpec, dict[str, Any]]:
    """Add the vector features ETL computes (:mod:`offline.embeddings`) to the tables
    and the spec: ``text`` on items, ``als`` on users and items."""
    stats: dict[str, Any] = {}
    added: list[Feature] = []

    def vector(frame: pl.DataFrame, name: str, values: np.ndarray) -> pl.DataFrame:
        column = pl.Series(name, values.astype(np.float32)).cast(pl.List(pl.Float32))
        return frame.with_columns(column)

    if config.text.columns:
        vectors, stats["text_encoder"] = text_vectors(items, config.text)
        items = vector(items, "text", vectors)
        added.append(Feature(name="text", kind=FeatureKind.VECTOR, owner="item"))
    if config.als.factors:
        chosen = train.filter(positive > 0)
        u = chosen.join(users.with_row_index("u").select("user_id", "u"), on="user_id")["u"]
        i = chosen.join(items.with_row_index("i").select("item_id", "i"), on="item_id")["i"]
        user_f, item_f = als_vectors(
            u.to_numpy(), i.to_numpy(), users.height, items.height, config.als
        )
        users, items = vector(users, "als", user_f), vector(items, "als", item_f)
        added += [Feature(name="als", kind=FeatureKind.VECTOR, owner=o) for o in ("user", "item")]
        stats["als_factors"] = config.als.factors
    return users, items, _with_features(spec, added), stats


def _aggregate_columns(spec: DatasetSpec, config: EtlConfig) -> list[str]:
    """The per-user and per-item aggregates ETL adds as numeric features."""
    # implicit data has no negatives: positives equal interactions and CTR is constant
    rated = [t.name for t in spec.tasks if t.kind == TaskKind.REGRESSION]
    return (
        ["n_interactions"]
        + ([] if spec.implicit else ["n_positive", "smoothed_ctr"])
        + [f"mean_{t}" for t in rated]
        + ([f"std_{t}" for t in rated] if "rating_std" in config.derived else [])
    )


def _aggregates(
    train: pl.DataFrame, key: str, positive: pl.Expr, spec: DatasetSpec, m: float, std: bool
) -> pl.DataFrame:
    prior = float(train.select(positive.mean()).item()) if train.height else 0.0
    aggs = [pl.len().alias("n_interactions"), positive.sum().alias("n_positive")]
    for t in spec.tasks:
        if t.kind == TaskKind.REGRESSION:
            aggs.append(pl.col(t.name).mean().alias(f"mean_{t.name}"))
            if std:  # of one rating: 0
                aggs.append(pl.col(t.name).std().fill_null(0.0).alias(f"std_{t.name}"))
    return (
        train.group_by(key)
        .agg(aggs)
        .with_columns(
            smoothed_ctr=(pl.col("n_positive") + m * prior) / (pl.col("n_interactions") + m)
        )
    )


def run(dataset: Dataset, config: EtlConfig) -> EtlResult:
    """Split, fit the feature map on training data, aggregate and encode."""
    spec = dataset.spec
    positive = pl.col(spec.positive_label) if spec.positive_label else pl.lit(1.0)
    raw_counts = {
        "users": dataset.users.height,
        "items": dataset.items.height,
        "interactions": dataset.interactions.height,
    }
    interactions = kcore(
        limited(dataset, config), config.min_user_interactions, config.min_item_interactions
    )
    loo = config.split == "leave_one_out"
    interactions = _with_context(
        cold_item_split(interactions, config.valid_frac, config.test_frac, config.cold_items, loo)
    )
    train = interactions.filter(pl.col("split") == "train")

    users = with_all_ids(dataset.users, interactions["user_id"], "user_id").sort("user_id")
    items = with_all_ids(dataset.items, interactions["item_id"], "item_id").sort("item_id")
    users, items, spec, vector_stats = _pretrained(users, items, train, positive, spec, config)
    items, spec = _derived(items, spec, config)
    _check_hashed(spec, config)
    hot = hotness(train, positive, config.hot_half_life_days, config.ctr_prior_strength)
    std = "rating_std" in config.derived
    users = users.join(
        _aggregates(train, "user_id", positive, spec, config.ctr_prior_strength, std),
        on="user_id",
        how="left",
    )
    items = items.join(
        _aggregates(train, "item_id", positive, spec, config.ctr_prior_strength, std),
        on="item_id",
        how="left",
    ).join(hot.select("item_id", "hotness", "hot_score"), on="item_id", how="left")
    agg_cols = _aggregate_columns(spec, config)
    prior_ctr = float(train.select(positive.mean()).item()) if train.height else 0.0
    fill = {
        "n_interactions": 0,
        "n_positive": 0,
        "smoothed_ctr": prior_ctr,
        "hotness": 0.0,
        "hot_score": 0.0,
    }
    users = users.with_columns(
        pl.col(c).fill_null(fill.get(c, None)) for c in agg_cols if c in fill
    )
    items = items.with_columns(
        pl.col(c).fill_null(fill.get(c, None))
        for c in [*agg_cols, "hotness", "hot_score"]
        if c in fill
    )
    # counts are heavy-tailed: the models see log1p of them
    log_cols = ["n_interactions", "n_positive", "hotness"]
    users = users.with_columns(
        pl.col(c).cast(pl.Float64).log1p() for c in log_cols if c in users.columns
    )
    items = items.with_columns(pl.col(c).cast(pl.Float64).log1p() for c in log_cols)

    # feature map: ids from training interactions, features from the tables
    categorical: dict[str, pl.Series] = {
        "user_id": train["user_id"],
        "item_id": train["item_id"],
    }
    every_moment = [clock_values(h, d) for h in range(24) for d in range(7)]
    categorical |= {c: pl.Series(c, sorted({m[c] for m in every_moment})) for c in spec.clock}
    numeric: dict[str, pl.Series] = {}
    for owner, table in (("user", users), ("item", items)):
        for f in spec.features_of(owner):
            if f.kind in (FeatureKind.CATEGORICAL, FeatureKind.MULTI_HOT):
                categorical[f.name] = table[f.name]
            elif f.kind == FeatureKind.NUMERIC:
                numeric[f.name] = table[f.name]
        for c in agg_cols + (["hotness"] if owner == "item" else []):
            numeric[f"{owner}_{c}"] = table[c]
    for f in spec.features_of("context"):  # what impressions were shown with, in training
        if f.kind == FeatureKind.CATEGORICAL:
            categorical[f.name] = train[f.name]
        elif f.kind == FeatureKind.NUMERIC:
            numeric[f.name] = train[f.name]
    fmap = FeatureMap.fit(
        categorical,
        numeric,
        min_count=config.min_count,
        max_size=config.max_vocab,
        hashed=config.hash_buckets,
    )

    # what an entity with no training interactions shows: the fill values, logged and
    # standardised as the rest, and ALS factors of 0 (retrieval.id_dropout trains on it)
    for owner, table, cols in (("user", users, agg_cols), ("item", items, [*agg_cols, "hotness"])):
        for c in cols:
            raw = fill.get(c)  # none: a mean, standardised to 0
            value = pl.Series([raw], dtype=pl.Float64)
            value = value.log1p() if c in log_cols else value
            fmap.unseen[f"{owner}_{c}"] = float(fmap.standardize(f"{owner}_{c}", value)[0])
        if "als" in table.columns:
            mean, scale = _vector_stats(table["als"])
            fmap.unseen[f"{owner}_als"] = (-mean / scale).tolist()
    users = _encode(users, "user", spec, fmap, agg_cols, config)
    items = _encode(items, "item", spec, fmap, agg_cols + ["hotness"], config)
    interactions = interactions.join(
        users.select("user_id", "user_idx"), on="user_id", how="left"
    ).join(items.select("item_id", "item_idx"), on="item_id", how="left")
    interactions = encode_context(interactions, items, spec, fmap)
    users = users.join(
        _history(interactions, positive, fmap, config.history_len), on="user_id", how="left"
    )
    users = users.with_columns(
        pl.col("history").fill_null(pl.lit([0] * config.history_len, dtype=pl.List(pl.Int64)))
    )
    counts = interactions.group_by("split").len().to_dict(as_series=False)
    stats = {
        "raw": raw_counts,
        "users": users.height,
        "items": items.height,
        "interactions": interactions.height,
        "split": dict(zip(counts["split"], counts["len"], strict=True)),
        "feature_slots": fmap.size,
        "positive_rate": prior_ctr,
        "context_features": [*spec.clock, *(f.name for f in spec.features_of("context"))],
        **vector_stats,
        "origin": dataset.origin,
    }
    return EtlResult(interactions, users, items, fmap, spec, stats)


def _check_hashed(spec: DatasetSpec, config: EtlConfig) -> None:
    hashable = {f.name for f in spec.features
                if f.kind in (FeatureKind.CATEGORICAL, FeatureKind.MULTI_HOT)}  # fmt: skip
    for name in config.hash_buckets:
        if name not in hashable:
            raise ConfigError(
                f"etl.hash_buckets.{name}: not a categorical or multi-hot feature of dataset "
                f"{spec.name!r} (those: {', '.join(sorted(hashable)) or 'none'})"
            )


def _encode(
    table: pl.DataFrame,
    owner: str,
    spec: DatasetSpec,
    fmap: FeatureMap,
    aggs: list[str],
    config: EtlConfig,
) -> pl.DataFrame:
    key = f"{owner}_id"
    table = table.with_row_index(f"{owner}_idx", offset=1).with_columns(
        pl.col(f"{owner}_idx").cast(pl.Int64)
    )
    cols: dict[str, Any] = {f"slot_{key}": fmap.encode(key, table[key])}
    for f in spec.features_of(owner):  # type: ignore[arg-type]
        if f.kind == FeatureKind.CATEGORICAL:
            cols[f"slot_{f.name}"] = fmap.encode(f.name, table[f.name])
        elif f.kind == FeatureKind.MULTI_HOT:
            cols[f"slot_{f.name}"] = pl.Series(
                fmap.encode_lists(f.name, table[f.name], config.max_multi_hot),
                dtype=pl.Array(pl.Int64, config.max_multi_hot),
            ).cast(pl.List(pl.Int64))
        elif f.kind == FeatureKind.NUMERIC:
            cols[f"num_{f.name}"] = fmap.standardize(f.name, table[f.name])
        elif f.kind == FeatureKind.VECTOR:
            cols[f"vec_{f.name}"] = _standardized_vectors(table[f.name])
    for c in aggs:
        cols[f"num_{owner}_{c}"] = fmap.standardize(f"{owner}_{c}", table[c])
    return table.with_columns(pl.Series(name, values) for name, values in cols.items())


def encode_context(
    interactions: pl.DataFrame, items: pl.DataFrame, spec: DatasetSpec, fmap: FeatureMap
) -> pl.DataFrame:
    """Add ``ctx_<name>`` of every context feature: the slot, the standardised value, or
    the anchor's item row (0: none, or an item the tables do not have)."""
    layout, col = ContextLayout.of(spec), ContextLayout.column
    if "is_weekend" in layout.clock:  # from the day, as shared.schema.clock_values
        weekend = pl.col("dow").is_in(WEEKEND_DAYS).cast(pl.Int64)
        interactions = interactions.with_columns(is_weekend=weekend)
    cols = {col(n): fmap.encode(n, interactions[n]) for n in layout.categorical}
    cols |= {col(n): fmap.standardize(n, interactions[n]) for n in layout.numeric}
    out = interactions.with_columns(pl.Series(name, values) for name, values in cols.items())
    if layout.anchor:
        rows = items.select(pl.col("item_id").alias(layout.anchor), anchor_row="item_idx")
        out = out.join(rows, on=layout.anchor, how="left", maintain_order="left")
        out = out.with_columns(pl.col("anchor_row").fill_null(0).alias(col(layout.anchor)))
        out = out.drop("anchor_row")
    return out


def _vector_stats(values: pl.Series) -> tuple[np.ndarray, float]:
    """The mean row and the one scale of a vector column (:func:`_standardized_vectors`)."""
    known = values.drop_nulls()
    if not len(known):
        return np.zeros(1, dtype=np.float32), 1.0
    rows = np.asarray(known.to_list(), dtype=np.float32)
    mean = rows.mean(axis=0)
    return mean, max(float((rows - mean).std()), 1e-6)


def _standardized_vectors(values: pl.Series) -> pl.Series:
    """A vector column centred and scaled to unit variance per coordinate on average
    (one scale for all coordinates, so directions are kept); null rows become 0."""
    mean, scale = _vector_stats(values)
    out = np.zeros((len(values), len(mean)), dtype=np.float32)
    present = values.is_not_null().to_numpy()
    if present.any():
        out[present] = (np.asarray(values.drop_nulls().to_list(), dtype=np.float32) - mean) / scale
    return pl.Series(out).cast(pl.List(pl.Float32))


def _history(
    interactions: pl.DataFrame, positive: pl.Expr, fmap: FeatureMap, length: int
) -> pl.DataFrame:
    """Each user's most recent positive items of every split, as item_id slots (most recent
    first): what serving sees. Training and evaluation rebuild causal histories instead."""
    pos = interactions.filter(positive > 0).sort("ts", descending=True)
    pos = pos.with_columns(slot=pl.Series(fmap.encode("item_id", pos["item_id"])))
    hist = pos.group_by("user_id", maintain_order=True).agg(
        pl.col("slot").head(length).alias("history")
    )
    pad = pl.lit([0] * length, dtype=pl.List(pl.Int64))
    return hist.with_columns(pl.concat_list("history", pad).list.head(length).alias("history"))


def write(result: EtlResult, bundle: Bundle) -> None:
    """Write the ETL outputs into ``bundle`` and record them in its manifest."""
    result.interactions.write_parquet(bundle.path(Files.INTERACTIONS))
    result.users.write_parquet(bundle.path(Files.USERS))
    result.items.write_parquet(bundle.path(Files.ITEMS))
    result.feature_map.save(bundle.path(Files.FEATURE_MAP))
    bundle.add(Files.INTERACTIONS, Files.USERS, Files.ITEMS, Files.FEATURE_MAP)
    bundle.write_json(Files.SPEC, result.spec.to_dict())
    bundle.write_json(Files.ETL_STATS, result.stats)
    bundle.update_manifest(feature_map=result.feature_map.fingerprint, etl=result.stats)
