"""MovieLens adapters: ML-100K (``u.data``…), ML-1M (``::``-separated ``.dat``) and the
CSV format of ml-latest-small, ML-25M and ML-32M (``ratings.csv``, ``movies.csv``,
optional ``tags.csv``).

Ratings are explicit, but nobody logged what users were shown and skipped, so the
data is implicit: every rating is an interaction (``interact``), ``like`` is
rating ≥ 4 given an interaction, and ``rating`` is kept as a regression task.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
from pydantic import Field

from offline.datasets.delimited import Column, read_csv, read_delimited
from offline.datasets.tables import require_unique, with_all_ids
from shared.config import StrictConfig
from shared.schema import Dataset, DatasetSpec, Feature, FeatureKind, Task, TaskKind

__all__ = [
    "MovieLensConfig",
    "MovieLensLatestConfig",
    "interaction_labels",
    "load_100k",
    "load_1m",
    "load_latest",
    "movielens_spec",
]

log = logging.getLogger(__name__)

GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


_RATINGS: list[Column] = [
    ("user_id", pl.Int64), ("item_id", pl.Int64), ("rating", pl.Float64), ("ts", pl.Int64),
]  # fmt: skip


class MovieLensConfig(StrictConfig):
    like_threshold: float = 4.0


class MovieLensLatestConfig(MovieLensConfig):
    top_tags: int = Field(5, ge=0)  # an item's most frequent tags kept (0: no tags feature)


def movielens_spec(
    name: str, user_features: tuple[str, ...], item_features: dict[str, FeatureKind]
) -> DatasetSpec:
    features = tuple(
        Feature(name=f, kind=FeatureKind.CATEGORICAL, owner="user") for f in user_features
    )
    features += tuple(Feature(name=f, kind=k, owner="item") for f, k in item_features.items())
    return DatasetSpec(
        name=name,
        features=features,
        tasks=(
            # ranked by p(interact): what a user will pick; p(like) is served beside it
            # (raise ranking.score_weights.like to favour what they will also rate highly)
            Task(name="like", parent="interact", score_weight=0.0),
            Task(
                name="rating",
                kind=TaskKind.REGRESSION,
                parent="interact",
                weight=0.2,
                score_weight=0.0,
            ),
        ),
        implicit=True,
    )


def interaction_labels(ratings: pl.DataFrame, config: MovieLensConfig) -> pl.DataFrame:
    """``user_id, item_id, ts, rating`` → the canonical interactions with their labels."""
    return ratings.select(
        pl.col("user_id").cast(pl.String),
        pl.col("item_id").cast(pl.String),
        pl.col("ts").cast(pl.Int64),
        (pl.col("rating") >= config.like_threshold).cast(pl.Float64).alias("like"),
        pl.col("rating").cast(pl.Float64),
    )


def _age_band(age: pl.Expr) -> pl.Expr:
    return age.cut(
        [17, 24, 34, 44, 54], labels=["<18", "18-24", "25-34", "35-44", "45-54", "55+"]
    ).cast(pl.String)


def _year(title_or_date: pl.Expr) -> pl.Expr:
    """The decade of a release, from '01-Jan-1995' or 'Toy Story (1995)'."""
    year = title_or_date.str.extract(r"(\d{4})\)?\s*$").cast(pl.Int64, strict=False)
    return ((year // 10) * 10).cast(pl.String).fill_null("unknown")


def load_100k(data_dir: Path, config: MovieLensConfig) -> Dataset:
    ratings = read_delimited(
        data_dir / "u.data", _RATINGS, "\t", required=[name for name, _ in _RATINGS]
    )
    users = read_delimited(
        data_dir / "u.user",
        [("user_id", pl.String), ("age", pl.Int64), ("gender", pl.String),
         ("occupation", pl.String), ("zip", pl.String)],
        "|",
        required=["user_id"],
    )  # fmt: skip
    genre_cols = [(f"g{i}", pl.Int64) for i in range(len(GENRES_100K))]
    items = read_delimited(
        data_dir / "u.item",
        [("item_id", pl.String), ("title", pl.String), ("release", pl.String),
         ("video_release", pl.String), ("url", pl.String), *genre_cols],
        "|",
        encoding="latin-1",
        required=["item_id"],
    )  # fmt: skip
    genres = pl.concat_list(
        pl.when(pl.col(f"g{i}") == 1).then(pl.lit(g)) for i, g in enumerate(GENRES_100K)
    ).list.drop_nulls()
    return Dataset(
        interactions=interaction_labels(ratings, config),
        users=users.select(
            "user_id",
            _age_band(pl.col("age")).alias("age_band"),
            "gender",
            "occupation",
            pl.col("zip").str.slice(0, 1).alias("zip_region"),
        ),
        items=items.select(
            "item_id", genres.alias("genres"), _year(pl.col("release")).alias("decade"), "title"
        ),
        spec=movielens_spec(
            "movielens-100k",
            ("age_band", "gender", "occupation", "zip_region"),
            {"genres": FeatureKind.MULTI_HOT, "decade": FeatureKind.CATEGORICAL},
        ),
        source=str(data_dir),
    )


def load_1m(data_dir: Path, config: MovieLensConfig) -> Dataset:
    ratings = read_delimited(
        data_dir / "ratings.dat", _RATINGS, "::", required=[name for name, _ in _RATINGS]
    )
    users = read_delimited(
        data_dir / "users.dat",
        [("user_id", pl.String), ("gender", pl.String), ("age", pl.String),
         ("occupation", pl.String), ("zip", pl.String)],
        "::",
        required=["user_id"],
    )  # fmt: skip
    items = read_delimited(
        data_dir / "movies.dat",
        [("item_id", pl.String), ("title", pl.String), ("genres", pl.String)],
        "::",
        encoding="latin-1",
        required=["item_id"],
    )
    return Dataset(
        interactions=interaction_labels(ratings, config),
        users=users.select(
            "user_id",
            pl.col("age").alias("age_band"),  # ML-1M already ships age bands
            "gender",
            "occupation",
            pl.col("zip").str.slice(0, 1).alias("zip_region"),
        ),
        items=items.select(
            "item_id",
            pl.col("genres").str.split("|").alias("genres"),
            _year(pl.col("title")).alias("decade"),
            "title",
        ),
        spec=movielens_spec(
            "movielens-1m",
            ("age_band", "gender", "occupation", "zip_region"),
            {"genres": FeatureKind.MULTI_HOT, "decade": FeatureKind.CATEGORICAL},
        ),
        source=str(data_dir),
    )


def load_latest(data_dir: Path, config: MovieLensLatestConfig) -> Dataset:
    """ml-latest-small / ML-25M / ML-32M: ``ratings.csv``, ``movies.csv``, ``tags.csv``.

    No user file exists, so users are the ids found in ``ratings.csv``. Items get
    ``genres`` (multi-hot), ``decade`` (from the title's year) and, when ``tags.csv`` is
    there, ``tags``: each item's ``top_tags`` most frequent tags, lowercased.
    """
    columns = [
        ("userId", pl.Int64),
        ("movieId", pl.Int64),
        ("rating", pl.Float64),
        ("timestamp", pl.Int64),
    ]
    ratings = read_csv(data_dir / "ratings.csv", columns, required=[n for n, _ in columns])
    ratings = ratings.rename({"userId": "user_id", "movieId": "item_id", "timestamp": "ts"})
    movies_path = data_dir / "movies.csv"
    movies = read_csv(
        movies_path,
        [("movieId", pl.Int64), ("title", pl.String), ("genres", pl.String)],
        required=["movieId"],
        line_column="line",
    ).with_columns(pl.col("movieId").cast(pl.String).alias("item_id"))
    require_unique(movies, "item_id", movies_path, "line")
    genres = (
        pl.col("genres")
        .str.split("|")
        .list.eval(pl.element().filter(pl.element() != "(no genres listed)"))
    )
    items = movies.select(
        "item_id",
        genres.fill_null(pl.lit([], dtype=pl.List(pl.String))).alias("genres"),
        _year(pl.col("title")).alias("decade"),
        "title",
    )
    item_features = {"genres": FeatureKind.MULTI_HOT, "decade": FeatureKind.CATEGORICAL}
    tags_path = data_dir / "tags.csv"
    if not tags_path.is_file():
        log.info("%s: no tags.csv, items get no tags feature", data_dir)
    elif config.top_tags:
        tags = read_csv(
            tags_path, [("movieId", pl.Int64), ("tag", pl.String)], required=["movieId"]
        )
        items = items.join(_top_tags(tags, config.top_tags), on="item_id", how="left").with_columns(
            pl.col("tags").fill_null(pl.lit([], dtype=pl.List(pl.String)))
        )
        item_features["tags"] = FeatureKind.MULTI_HOT
    user_ids, item_ids = (  # distinct ids from the integer columns: cheaper than from strings
        ratings[c].unique(maintain_order=True).cast(pl.String) for c in ("user_id", "item_id")
    )
    return Dataset(
        interactions=interaction_labels(ratings, config),
        users=user_ids.to_frame(),
        items=with_all_ids(items, item_ids, "item_id"),
        spec=movielens_spec("movielens-latest", (), item_features),
        source=str(data_dir),
    )


def _top_tags(tags: pl.DataFrame, k: int) -> pl.DataFrame:
    """``item_id, tags``: each item's ``k`` most frequent tags (ties alphabetical)."""
    counts = (
        tags.select(
            pl.col("movieId").cast(pl.String).alias("item_id"),
            pl.col("tag").str.strip_chars().str.to_lowercase(),
        )
        .filter(pl.col("tag").is_not_null() & (pl.col("tag") != ""))
        .group_by("item_id", "tag")
        .len()
    )
    return counts.group_by("item_id").agg(
        pl.col("tag").sort_by("len", "tag", descending=[True, False]).head(k).alias("tags")
    )
