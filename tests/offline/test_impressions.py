"""``offline.training.impressions``: sampled negatives know only the past."""

from __future__ import annotations

import numpy as np
import polars as pl

from offline.training.impressions import ChosenBy, sample_negatives


def test_chosen_by_knows_when_each_item_was_first_chosen() -> None:
    log = pl.DataFrame({"user_idx": [1, 1, 1, 2], "item_idx": [5, 6, 5, 5], "ts": [10, 20, 30, 5]})
    chosen = ChosenBy.of(log, n_items=6)
    keys = np.array([1 * 7 + 5, 1 * 7 + 6, 1 * 7 + 6, 2 * 7 + 5, 2 * 7 + 1])
    at = np.array([10, 19, 20, 4, 100])
    assert chosen.chosen(keys, at).tolist() == [True, False, True, False, False]


def test_negatives_exclude_what_was_chosen_by_then_and_only_that() -> None:
    log = pl.DataFrame({"user_idx": [1, 1], "item_idx": [5, 6], "ts": [10, 20]})
    users, items = sample_negatives(
        np.ones(1, dtype=np.int64), np.array([15]), 2000, 6, ChosenBy.of(log, 6),
        np.ones(7), "uniform", np.random.default_rng(0),
    )  # fmt: skip
    assert (users == 1).all() and len(items) == 2000
    assert 5 not in set(items.tolist())  # chosen at 10, before 15
    assert 6 in set(items.tolist())  # chosen only at 20: a fair negative at 15
