"""The homepage impressions source: ``|``-separated ``.dat`` files without a header.

- ``shop.dat``: ``ts|uid|iid|label``, one impression per line, label 1 = click, 0 = shown
  and skipped;
- ``user_feature.dat``: ``uid|utag1|utag2``;
- ``item_feature.dat``: ``iid|itag1|itag2|itag3``.

Rows are impressions with a label, so the data is explicit (``implicit=False``) with one
task, ``click``. Every tag is a categorical feature; users and items found in
``shop.dat`` but missing from their feature file get null tags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl

from offline.datasets.delimited import read_delimited
from offline.datasets.tables import require_unique, with_all_ids
from shared.config import StrictConfig
from shared.errors import DataError
from shared.schema import Dataset, DatasetSpec, Feature, FeatureKind, Task

__all__ = ["HomepageConfig", "load", "spec"]

USER_TAGS = ("utag1", "utag2")
ITEM_TAGS = ("itag1", "itag2", "itag3")


class HomepageConfig(StrictConfig):
    ts_unit: Literal["s", "ms"] = "s"  # the unit of shop.dat's timestamps


def spec() -> DatasetSpec:
    features = tuple(Feature(name=t, kind=FeatureKind.CATEGORICAL, owner="user") for t in USER_TAGS)
    features += tuple(
        Feature(name=t, kind=FeatureKind.CATEGORICAL, owner="item") for t in ITEM_TAGS
    )
    return DatasetSpec(
        name="homepage",
        features=features,
        tasks=(Task(name="click"),),
        implicit=False,
        positive_label="click",
    )


def load(data_dir: Path, config: HomepageConfig) -> Dataset:
    """Read the three files; errors name the file and line."""
    shop_path = data_dir / "shop.dat"
    shop = read_delimited(
        shop_path,
        [("ts", pl.Int64), ("user_id", pl.String), ("item_id", pl.String), ("label", pl.Int64)],
        "|",
        required=["ts", "user_id", "item_id", "label"],
        line_column="line",
    )
    bad = ~shop["label"].is_in([0, 1])
    if bad.any():
        row = int(bad.arg_max())
        raise DataError(shop_path, f"label {shop['label'][row]} is not 0 or 1", shop["line"][row])
    ts = pl.col("ts") // 1000 if config.ts_unit == "ms" else pl.col("ts")
    interactions = shop.select(
        "user_id", "item_id", ts.alias("ts"), pl.col("label").cast(pl.Float64).alias("click")
    )
    users = _features(data_dir / "user_feature.dat", "user_id", USER_TAGS)
    items = _features(data_dir / "item_feature.dat", "item_id", ITEM_TAGS)
    return Dataset(
        interactions=interactions,
        users=with_all_ids(users, interactions["user_id"], "user_id"),
        items=with_all_ids(items, interactions["item_id"], "item_id"),
        spec=spec(),
        source=str(data_dir),
    )


def _features(path: Path, key: str, tags: tuple[str, ...]) -> pl.DataFrame:
    columns = [(key, pl.String), *((t, pl.String) for t in tags)]
    frame = read_delimited(path, columns, "|", required=[key], line_column="line")
    require_unique(frame, key, path, "line")
    return frame.drop("line")
