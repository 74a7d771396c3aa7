import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from offline import etl
from offline.datasets import load_dataset
from shared.bundle import Bundle, Files
from tests.conftest import REPO


@pytest.fixture(scope="module")
def synthetic_result() -> etl.EtlResult:
    data = load_dataset(
        "synthetic", options={"n_users": 300, "n_items": 200, "n_impressions": 20_000}
    )
    return etl.run(data, etl.EtlConfig())


def test_split_leaks_nothing(synthetic_result: etl.EtlResult) -> None:
    per_user = synthetic_result.interactions.group_by("user_id").agg(
        train=pl.col("ts").filter(pl.col("split") == "train").max(),
        valid_min=pl.col("ts").filter(pl.col("split") == "valid").min(),
        valid_max=pl.col("ts").filter(pl.col("split") == "valid").max(),
        test=pl.col("ts").filter(pl.col("split") == "test").min(),
        n=pl.len(),
    )
    held = per_user.filter(pl.col("n") >= 3)
    assert held.height > 0 and held["test"].null_count() == 0
    assert (held["train"] < held["valid_min"]).all()
    assert (held["valid_max"] < held["test"]).all()


def test_ties_at_the_boundary_are_held_out() -> None:
    df = pl.DataFrame({"user_id": ["u"] * 5, "item_id": list("abcde"), "ts": [1, 2, 3, 4, 4]})
    out = etl.temporal_split(df, valid_frac=0.0, test_frac=0.2)
    assert out.sort("item_id")["split"].to_list() == ["train", "train", "train", "test", "test"]


def test_coarse_timestamps_keep_the_shares() -> None:
    """Day-level timestamps: holding out every tie would take 60 % (not 20 %) to test."""
    df = pl.DataFrame({"user_id": ["u"] * 10, "item_id": list("abcdefghij"),
                       "ts": [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]})  # fmt: skip
    out = etl.temporal_split(df, valid_frac=0.0, test_frac=0.2)
    # the source's order breaks the tie: its last two are the test part
    assert out["split"].to_list() == ["train"] * 8 + ["test"] * 2
    again = etl.temporal_split(df, valid_frac=0.0, test_frac=0.2)
    assert again.equals(out)  # deterministic


def test_kcore_is_iterative() -> None:
    # dropping item z (1 interaction) leaves user c with 1 interaction, which must go too
    df = pl.DataFrame(
        {"user_id": ["a", "a", "b", "b", "c", "c"], "item_id": ["x", "y", "x", "y", "x", "z"]}
    )
    out = etl.kcore(df, min_user=2, min_item=2)
    assert sorted(out["user_id"].unique()) == ["a", "b"]
    assert sorted(out["item_id"].unique()) == ["x", "y"]


def test_hotness_order_on_a_hand_made_log() -> None:
    day = 86_400
    t = 100 * day
    rows = (
        [("old", t - 60 * day, 1.0)] * 10  # many positives, long ago
        + [("new", t - 0, 1.0)] * 4  # fewer, but today
        + [("noisy", t, 1.0)]
        + [("noisy", t, 0.0)] * 30  # fresh but a poor CTR
    )
    df = pl.DataFrame(rows, schema=["item_id", "ts", "click"], orient="row")
    hot = etl.hotness(df, pl.col("click"), half_life_days=7, prior_strength=5).sort(
        "hotness", descending=True
    )
    assert hot["item_id"].to_list()[0] == "new"  # 4 today beat 10 two months ago
    assert hot.filter(pl.col("item_id") == "old")["hotness"][0] == pytest.approx(
        10 * 2 ** (-60 / 7)
    )
    by_score = hot.sort("hot_score", descending=True)["item_id"].to_list()
    assert by_score.index("new") < by_score.index("noisy")
    ctr = dict(zip(hot["item_id"], hot["ctr"], strict=True))
    prior = 15 / 45
    assert ctr["noisy"] == pytest.approx((1 + 5 * prior) / (31 + 5))


def test_tables_are_encoded_for_every_row(synthetic_result: etl.EtlResult) -> None:
    r = synthetic_result
    assert (
        r.interactions["user_idx"].null_count() == 0
        and r.interactions["item_idx"].null_count() == 0
    )
    assert r.users["user_idx"].to_list() == list(range(1, r.users.height + 1))
    assert r.items["slot_tags"].list.len().unique().to_list() == [etl.EtlConfig().max_multi_hot]
    assert r.users["history"].list.len().unique().to_list() == [etl.EtlConfig().history_len]
    # the served history is each user's latest clicks of every split, test included
    latest = (
        r.interactions.filter(pl.col("click") > 0)
        .sort("ts")
        .group_by("user_id")
        .agg(pl.col("item_id").last(), pl.col("split").last())
        .filter(pl.col("split") == "test")
        .join(r.users.select("user_id", "history"), on="user_id")
    )
    assert latest.height > 0
    slots = r.feature_map.encode("item_id", latest["item_id"])
    firsts = latest["history"].list.first().to_numpy()
    assert (np.asarray(slots) == firsts).mean() > 0.95  # ties at the same second may reorder
    # aggregates come from the training split only
    train = r.interactions.filter(pl.col("split") == "train")
    assert r.users["n_interactions"].exp().sum() - r.users.height == pytest.approx(
        train.height, rel=1e-6
    )


def test_etl_cli_on_movielens_100k(ml100k_dir, tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "offline", "etl", "--dataset", "movielens-100k",
         "--data-dir", str(ml100k_dir), "--artifacts", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "943 users, 1682 items, 100000 interactions" in out.stdout
    bundle = Bundle.open(tmp_path)
    assert str(bundle.root) in out.stdout
    bundle.verify(required=(Files.INTERACTIONS, Files.USERS, Files.ITEMS, Files.FEATURE_MAP))
    assert not list(tmp_path.glob(".staging-*"))


def test_malformed_line_fails_with_one_line_naming_file_and_line(ml100k_dir, tmp_path) -> None:
    data = tmp_path / "ml"
    data.mkdir()
    for name in ("u.user", "u.item"):
        (data / name).write_bytes((ml100k_dir / name).read_bytes())
    lines = (ml100k_dir / "u.data").read_text().splitlines()[:50]
    lines[41] = "1\t2\tfour\t881250949"
    (data / "u.data").write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "offline", "etl", "--dataset", "movielens-100k",
         "--data-dir", str(data), "--artifacts", str(tmp_path / "art")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: {data / 'u.data'}:42: column 'rating': 'four' is not a valid Float64"
    ]
    assert not (tmp_path / "art").exists() or not any((tmp_path / "art").iterdir())
