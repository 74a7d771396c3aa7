"""What the ranker trains on: impressions with labels, one row per (user, item, context).

Logged impressions are used as they are. Implicit data (MovieLens) has none, so every
interaction becomes a positive impression of the task ``interact`` and ``neg_ratio``
items the user had not chosen by then become negatives (same user, same time and
context): the ranker then learns what a user will pick, not only how they rate what
they picked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from shared.features import ContextLayout
from shared.schema import DatasetSpec, Task

__all__ = [
    "INTERACT",
    "ChosenBy",
    "Sampling",
    "effective_tasks",
    "ranking_impressions",
    "sample_negatives",
]

INTERACT = Task(name="interact", score_weight=1.0)
Sampling = Literal["uniform", "popularity", "mixed"]


def effective_tasks(spec: DatasetSpec) -> tuple[Task, ...]:
    """The ranker's tasks: the spec's, behind ``interact`` for implicit data."""
    return (INTERACT, *spec.tasks) if spec.implicit else spec.tasks


@dataclass(frozen=True)
class ChosenBy:
    """When each user first chose each item: sorted keys ``user * (n_items + 1) + item``."""

    keys: np.ndarray  # (K,) int64, sorted
    first_ts: np.ndarray  # (K,) int64, the first interaction's time

    @classmethod
    def of(cls, interactions: pl.DataFrame, n_items: int) -> ChosenBy:
        first = (
            interactions.select(
                key=pl.col("user_idx").cast(pl.Int64) * (n_items + 1) + pl.col("item_idx"),
                ts=pl.col("ts").cast(pl.Int64),
            )
            .group_by("key")
            .agg(pl.col("ts").min())
            .sort("key")
        )
        return cls(first["key"].to_numpy(), first["ts"].to_numpy())

    def chosen(self, keys: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Whether each (user, item) key had been chosen by time ``at`` (same shape)."""
        if not len(self.keys):
            return np.zeros(keys.shape, dtype=bool)
        where = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return (self.keys[where] == keys) & (self.first_ts[where] <= at)


def sample_negatives(
    users: np.ndarray,
    at: np.ndarray,
    ratio: int,
    n_items: int,
    chosen: ChosenBy,
    popularity: np.ndarray,
    sampling: Sampling,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``ratio`` items per entry of ``users`` that the user had not chosen by then.

    No look-ahead: an item the user chooses only later is a fair negative at ``at``
    (it was not chosen then), as it would be in a logged impression.

    Args:
        users: (P,) user rows, one per positive.
        at: (P,) the positives' times.
        ratio: negatives per positive.
        n_items: items are rows 1..n_items.
        chosen: when each user first chose each item.
        popularity: (n_items + 1,) interaction counts (row 0 unused).
        sampling: uniform, popularity (∝ count^0.75), or mixed (half each).

    Returns:
        (P·ratio,) user rows and item rows of the negatives.
    """
    neg_users = np.repeat(users, ratio)
    neg_at = np.repeat(at, ratio)
    weights = popularity[1:].astype(np.float64) ** 0.75 + 1e-9
    weights /= weights.sum()

    def draw(n: int) -> np.ndarray:
        uniform = rng.integers(1, n_items + 1, n)
        if sampling == "uniform":
            return uniform
        popular = rng.choice(n_items, n, p=weights) + 1
        if sampling == "popularity":
            return popular
        return np.where(rng.random(n) < 0.5, uniform, popular)

    items = draw(len(neg_users))
    for _ in range(10):  # resample the few that hit an item chosen by then
        clash = chosen.chosen(neg_users * (n_items + 1) + items, neg_at)
        if not clash.any():
            break
        items[clash] = draw(int(clash.sum()))
    return neg_users, items


def ranking_impressions(
    interactions: pl.DataFrame,
    spec: DatasetSpec,
    n_items: int,
    neg_ratio: int,
    sampling: Sampling,
    seed: int,
    chosen: ChosenBy,
    popularity: np.ndarray,
) -> pl.DataFrame:
    """Impressions of one split: ``user_idx, item_idx, ts``, the encoded context
    (``ctx_*``) and a column per task."""
    context = ContextLayout.of(spec).columns
    base = ["user_idx", "item_idx", "ts", *context]
    labels = spec.label_columns
    if not spec.implicit:
        return interactions.select(
            *base, *labels, *([spec.oracle_column] if spec.oracle_column else [])
        )
    pos = interactions.select(*base, *labels).with_columns(interact=pl.lit(1.0))
    rng = np.random.default_rng(seed)
    users = pos["user_idx"].to_numpy()
    neg_users, neg_items = sample_negatives(
        users, pos["ts"].to_numpy(), neg_ratio, n_items, chosen, popularity, sampling, rng
    )
    source = np.repeat(np.arange(len(users)), neg_ratio)
    neg = pl.DataFrame(
        {
            "user_idx": neg_users,
            "item_idx": neg_items,
            "ts": pos["ts"].to_numpy()[source],
            **{c: pos[c].to_numpy()[source] for c in context},
        }
    ).with_columns(
        [pl.lit(0.0).alias("interact")] + [pl.lit(None, dtype=pl.Float64).alias(c) for c in labels]
    )
    return pl.concat([pos, neg.select(pos.columns)])
