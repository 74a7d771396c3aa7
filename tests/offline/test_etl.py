import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from offline import etl
from offline.datasets import load_dataset
from offline.embeddings import TextConfig, hashed_bag_of_words, text_vectors
from offline.training.loop import TrainerConfig
from offline.training.ranking import RankingConfig, ranking_data, train_ranker
from shared.bundle import Bundle, Files
from shared.errors import ConfigError
from shared.features import FeatureTables
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


def test_cold_item_split_holds_out_every_interaction_of_the_newest_items() -> None:
    data = load_dataset("synthetic", options={"n_users": 100, "n_items": 60, "n_impressions": 6000})
    out = etl.cold_item_split(data.interactions, 0.1, 0.1, 0.2)
    first = data.interactions.group_by("item_id").agg(pl.col("ts").min()).sort("ts", "item_id")
    order = first["item_id"].to_list()
    # the newest 12 items for test, the 12 before them for validation, all of their rows
    for split, held in (("test", order[-12:]), ("valid", order[-24:-12])):
        rows = out.filter(pl.col("item_id").is_in(held))
        assert rows.height == data.interactions.filter(pl.col("item_id").is_in(held)).height
        assert set(rows["split"]) == {split}
    assert out.filter(~pl.col("item_id").is_in(order[-24:]))["split"].n_unique() == 3
    assert out.height == data.interactions.height


def test_text_and_als_vectors_become_features_of_the_tables() -> None:
    data = load_dataset("synthetic", options={"n_users": 80, "n_items": 50, "n_impressions": 4000})
    config = etl.EtlConfig(
        text={"columns": ["category", "tags"], "dim": 64}, als={"factors": 6, "iterations": 2}
    )
    r = etl.run(data, config)
    kinds = {(f.name, f.owner): f.kind for f in r.spec.features}
    assert kinds[("text", "item")] == kinds[("als", "item")] == kinds[("als", "user")] == "vector"
    assert r.stats["text_encoder"] == "wordllama" and r.stats["als_factors"] == 6
    text = np.asarray(r.items["vec_text"].to_list())
    assert text.shape == (50, 64) and np.isfinite(text).all()
    # items of one category read alike; of another, less so (on average: tags differ)
    raw = np.asarray(r.items["text"].to_list())
    cos = raw @ raw.T
    category = r.items["category"].to_numpy()
    same = (category[:, None] == category[None, :]) & ~np.eye(len(category), dtype=bool)
    assert same.any() and cos[same].mean() > cos[~same].mean()
    assert np.asarray(r.users["vec_als"].to_list()).shape == (80, 6)
    tables = FeatureTables.from_frames(r.users, r.items, r.spec, r.feature_map)
    assert tables.items.dense_widths[-1] == 6 and 64 in tables.items.dense_widths
    assert tables.items.dense.shape[1] == sum(tables.items.dense_widths)


def test_hashed_bag_of_words_is_the_fallback_and_is_deterministic() -> None:
    texts = ["Toy Story (1995) Animation Children", "toy story 2 animation", "Heat (1995) Crime"]
    a = hashed_bag_of_words(texts, 64)
    assert np.array_equal(a, hashed_bag_of_words(texts, 64))
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    assert a[0] @ a[1] > a[0] @ a[2]
    items = pl.DataFrame({"item_id": ["a", "b"], "title": ["x y", None], "tags": [["p"], []]})
    vectors, encoder = text_vectors(items, TextConfig(columns=("title", "tags"), encoder="hashed"))
    assert encoder == "hashed" and vectors.shape == (2, 64)
    with pytest.raises(ConfigError, match="no column 'genre'"):
        text_vectors(items, TextConfig(columns=("genre",)))


def test_wordllama_loads_from_its_wheel_without_the_network() -> None:
    code = (
        "from offline.embeddings import _wordllama; import numpy as np; m = _wordllama(64); "
        "v = m.embed(['a film about toys', 'a film about toy robots', 'tax law'], norm=True); "
        "assert v.shape == (3, 64) and v[0] @ v[1] > v[0] @ v[2], v @ v.T"
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "no_proxy": "*",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_leave_one_out_holds_out_the_last_two_of_each_user() -> None:
    data = load_dataset("synthetic", options={"n_users": 60, "n_items": 40, "n_impressions": 3000})
    out = etl.temporal_split(data.interactions, 0.1, 0.1, leave_one_out=True)
    per_user = out.group_by("user_id").agg(
        n=pl.len(),
        test=(pl.col("split") == "test").sum(),
        valid=(pl.col("split") == "valid").sum(),
        last=pl.col("split").sort_by("ts").last(),
    )
    held = per_user.filter(pl.col("n") >= 3)
    # one each, more only where the last timestamps tie
    assert (held["test"] >= 1).all() and (held["valid"] >= 1).all()
    assert (held["test"] == 1).mean() > 0.95 and (held["valid"] == 1).mean() > 0.95
    assert set(held["last"]) == {"test"}
    r = etl.run(data, etl.EtlConfig(split="leave_one_out"))
    assert r.stats["split"]["test"] < r.stats["split"]["train"] / 10


def test_row_limits_metadata_filter_and_vocabulary_cap() -> None:
    data = load_dataset("synthetic", options={"n_users": 80, "n_items": 50, "n_impressions": 4000})
    inter = data.interactions
    config = etl.EtlConfig(max_interactions=1000)
    kept = etl.limited(data, config)
    assert kept.height == 1000 and kept["ts"].min() >= inter["ts"].sort(descending=True)[999]
    top = inter.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
    kept = etl.limited(data, etl.EtlConfig(max_items=10))
    assert set(kept["item_id"]) == set(top.head(10)["item_id"])
    # items with no feature at all lose their interactions when asked
    bare = data.items.with_columns(
        pl.when(pl.col("item_id").is_in(["i1", "i2"])).then(None).otherwise(pl.col(c)).alias(c)
        for c in ("category", "brand", "price_band", "price", "tags")
    )
    data.items = bare
    dropped = etl.limited(data, etl.EtlConfig(items_without_metadata="drop"))
    assert not dropped["item_id"].is_in(["i1", "i2"]).any()
    assert dropped.height == inter.filter(~pl.col("item_id").is_in(["i1", "i2"])).height
    assert etl.limited(data, etl.EtlConfig()).height == inter.height
    r = etl.run(data, etl.EtlConfig(max_vocab=3))
    assert len(r.feature_map.vocab["brand"]) == 3 and len(r.feature_map.vocab["region"]) == 3
    assert len(r.feature_map.vocab["item_id"]) > 3  # ids are never capped


def test_is_weekend_and_hashed_features_are_encoded_and_trained() -> None:
    data = load_dataset("synthetic", options={"n_users": 80, "n_items": 50, "n_impressions": 4000})
    config = etl.EtlConfig(derived=["is_weekend"], hash_buckets={"tags": 8, "brand": 4})
    r = etl.run(data, config)
    assert r.spec.clock == ("hour", "dow", "is_weekend")
    assert r.stats["context_features"][:3] == ["hour", "dow", "is_weekend"]
    weekend = r.interactions["dow"] >= 5
    assert (r.interactions["is_weekend"] == weekend.cast(pl.Int64)).all()
    slots = r.interactions["ctx_is_weekend"]
    fmap = r.feature_map
    assert set(slots) == {fmap.slot("is_weekend", "0"), fmap.slot("is_weekend", "1")}
    assert fmap.hashed == {"tags": 8, "brand": 4} and "brand" not in fmap.vocab
    brand = r.items["slot_brand"].to_numpy()
    assert (brand > fmap.oov("brand")).all() and (brand <= fmap.oov("brand") + 4).all()
    tables = FeatureTables.from_frames(r.users, r.items, r.spec, r.feature_map)
    assert tables.context.categorical[:3] == ("hour", "dow", "is_weekend")
    ranking = RankingConfig(trainer=TrainerConfig(epochs=1, batch_size=512), hidden=[16])
    data = ranking_data(tables, r.interactions, r.spec, ranking)
    trained = train_ranker("dcn", tables, data, r.spec, ranking)
    assert np.isfinite(trained.history.epochs[0]["train_loss"])
    # the same clock at serving time: Saturday noon is a weekend slot
    saturday = tables.context_of({}, hour=12, dow=5)
    assert saturday.cat[2] == fmap.slot("is_weekend", "1")


def test_rating_spread_and_title_statistics_on_movielens(ml100k_dir) -> None:
    data = load_dataset("movielens-100k", ml100k_dir)
    config = etl.EtlConfig(max_interactions=8000, derived=["rating_std", "title_stats"])
    r = etl.run(data, config)
    train = r.interactions.filter(pl.col("split") == "train")
    spread = train.group_by("user_id").agg(pl.col("rating").std().fill_null(0.0).alias("want"))
    got = r.users.join(spread, on="user_id").select("std_rating", "want")
    assert np.allclose(got["std_rating"], got["want"]) and got["want"].max() > 0.5
    assert "num_item_std_rating" in r.items.columns and "num_user_std_rating" in r.users.columns
    names = {f.name for f in r.spec.features_of("item")}
    assert {"title_words", "title_chars"} <= names
    toy = r.items.filter(pl.col("title") == "Toy Story (1995)")
    assert toy["title_words"].item() == 3 and toy["title_chars"].item() == 16
    tables = FeatureTables.from_frames(r.users, r.items, r.spec, r.feature_map)
    ranking = RankingConfig(trainer=TrainerConfig(epochs=1, batch_size=512), hidden=[16])
    data = ranking_data(tables, r.interactions, r.spec, ranking)
    trained = train_ranker("deepfm", tables, data, r.spec, ranking)
    assert np.isfinite(trained.history.epochs[0]["train_loss"])


def test_derived_and_hashed_options_name_what_is_missing() -> None:
    data = load_dataset("synthetic", options={"n_users": 40, "n_items": 30, "n_impressions": 800})
    with pytest.raises(ConfigError, match="title_stats.*no title column"):
        etl.run(data, etl.EtlConfig(derived=["title_stats"]))
    with pytest.raises(ConfigError, match=r"hash_buckets\.item_id: not a categorical"):
        etl.run(data, etl.EtlConfig(hash_buckets={"item_id": 100}))
    with pytest.raises(ValueError, match="hash_buckets.brand"):
        etl.EtlConfig(hash_buckets={"brand": 0})
    with pytest.raises(ValueError, match="derived"):
        etl.EtlConfig(derived=["is_holiday"])
