"""Every dataset source: canonical tables on real or tiny files, and bad input named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from offline import etl
from offline.datasets import SOURCES, load_dataset
from offline.datasets.synthetic import N_SLOTS, PAGES, SyntheticConfig, TrueValue, World
from shared.errors import ConfigError
from shared.schema import Dataset, FeatureKind
from tests.conftest import raises_data_error

SMALL_SYNTHETIC = {"n_users": 40, "n_items": 30, "n_impressions": 3000, "days": 5}


def _write(directory: Path, files: dict[str, str | bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        (directory / name).write_bytes(data)
    return directory


def _bad_input(tmp_path: Path, source: str, files: dict, name: str, line: int, reason: str) -> None:
    """Loading ``source`` from ``files`` fails on ``name``:``line`` with ``reason``."""
    data_dir = _write(tmp_path, files)
    e = raises_data_error(lambda: load_dataset(source, data_dir), data_dir / name, line)
    assert e.reason.startswith(reason)


def _missing_file(tmp_path: Path, source: str, files: dict, missing: str) -> None:
    data_dir = _write(tmp_path, {k: v for k, v in files.items() if k != missing})
    raises_data_error(lambda: load_dataset(source, data_dir), data_dir / missing, None)


def _features(dataset: Dataset, owner: str) -> dict[str, FeatureKind]:
    return {f.name: f.kind for f in dataset.spec.features_of(owner)}  # type: ignore[arg-type]


def test_every_documented_source_is_registered() -> None:
    assert set(SOURCES) == {
        "synthetic",
        "movielens-100k",
        "movielens-1m",
        "movielens-latest",
        "homepage",
        "tabular",
        "events",
    }


# ------------------------------------------------------------------ registry


def test_unknown_dataset() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'movielens-5m'"):
        load_dataset("movielens-5m")


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("synthetic", {"n_userz": 10}, "n_userz"),
        ("synthetic", {"n_users": 1}, "n_users"),
        ("movielens-100k", {"like_treshold": 3}, "like_treshold"),
        ("movielens-latest", {"top_tags": -1}, "top_tags"),
        ("homepage", {"ts_unit": "days"}, "ts_unit"),
        ("tabular", {"schema_file": "x.yaml"}, "schema_file"),
    ],
)
def test_bad_options(tmp_path: Path, name: str, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_dataset(name, tmp_path, options)


def test_data_dir_needed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs --data-dir"):
        load_dataset("movielens-1m")
    raises_data_error(
        lambda: load_dataset("homepage", tmp_path / "nowhere"), tmp_path / "nowhere", None
    )


# ----------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_seed() -> None:
    a = load_dataset("synthetic", options=SMALL_SYNTHETIC)
    b = load_dataset("synthetic", options=SMALL_SYNTHETIC)
    c = load_dataset("synthetic", options=SMALL_SYNTHETIC | {"seed": 7})
    for table in ("interactions", "users", "items"):
        assert getattr(a, table).equals(getattr(b, table))
    assert not a.interactions.equals(c.interactions)


def test_synthetic_sizes_and_funnel() -> None:
    d = load_dataset("synthetic", options=SMALL_SYNTHETIC)
    assert (d.users.height, d.items.height, d.interactions.height) == (40, 30, 3000)
    assert d.interactions["user_id"].is_in(d.users["user_id"].implode()).all()
    assert d.interactions["item_id"].is_in(d.items["item_id"].implode()).all()
    assert d.spec.label_columns == ["click", "add_to_cart", "purchase"]
    i = d.interactions
    assert ((i["purchase"] <= i["add_to_cart"]) & (i["add_to_cart"] <= i["click"])).all()
    assert 0 < i["click"].mean() < 1  # type: ignore[operator]
    assert i["p_click"].is_between(0, 1).all()
    assert i["ts"].is_sorted()


def test_synthetic_context_has_position_bias_page_effects_and_a_confounding_policy() -> None:
    options = SyntheticConfig(n_users=200, n_items=100, n_impressions=40_000)
    d = load_dataset("synthetic", options=options.model_dump())
    i = d.interactions
    assert set(i["page"].unique()) == set(PAGES)
    assert sorted(i["position"].unique().to_list()) == [str(p) for p in range(N_SLOTS)]
    assert (i["anchor"].is_not_null() == (i["page"] == "detail")).all()
    # the true p(click) of the same pairs falls with the slot, by exactly the bias
    world = World.draw(options, np.random.default_rng(options.seed))
    users, items = np.arange(50), np.arange(50)
    top, _, _ = world.probabilities(users, items, np.full(50, 12), np.full(50, 2), 0, 0)
    low, _, _ = world.probabilities(users, items, np.full(50, 12), np.full(50, 2), 0, 9)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    np.testing.assert_allclose(logit(top) - logit(low), options.position_bias * np.log2(10))
    # the logging policy: items shown on top are the more popular ones
    shown = i.group_by("item_id").agg(n=pl.len(), slot=pl.col("position").cast(pl.Int64).mean())
    assert np.corrcoef(np.log(shown["n"].to_numpy()), shown["slot"].to_numpy())[0, 1] < -0.3
    # the oracle's lists are worth at least any other list of the same candidates
    value = TrueValue(world)
    context = pl.DataFrame({"hour": [9, 20], "dow": [0, 6], "page": ["home", "detail"],
                            "anchor": [None, "i3"]})  # fmt: skip
    candidates = np.array([[f"i{j}" for j in range(40)]] * 2)
    best = value.best(np.array(["u1", "u2"]), candidates, context, 10)
    for measure in ("clicks", "purchases"):
        oracle = value.lists(np.array(["u1", "u2"]), best[measure], context)[measure]
        shown = value.lists(np.array(["u1", "u2"]), candidates[:, :10], context)[measure]
        assert (oracle >= shown).all() and (oracle > shown).any()


# ------------------------------------------------------------ movielens-100k


def test_movielens_100k_real_files(ml100k_dir: Path) -> None:
    d = load_dataset("movielens-100k", ml100k_dir)
    assert (d.users.height, d.items.height, d.interactions.height) == (943, 1682, 100_000)
    assert d.interactions.schema == pl.Schema(
        {"user_id": pl.String, "item_id": pl.String, "ts": pl.Int64}
        | {"like": pl.Float64, "rating": pl.Float64}
    )
    assert d.users.schema == pl.Schema(
        {c: pl.String for c in ("user_id", "age_band", "gender", "occupation", "zip_region")}
    )
    assert d.items.schema == pl.Schema(
        {
            "item_id": pl.String,
            "genres": pl.List(pl.String),
            "decade": pl.String,
            "title": pl.String,
        }  # the title: raw text (etl.text), not a feature
    )
    assert (d.items["genres"].list.len() > 0).mean() > 0.99  # type: ignore[operator]
    assert d.items.filter(pl.col("item_id") == "1")["decade"].item() == "1990"
    i = d.interactions
    assert (i["like"] == (i["rating"] >= 4).cast(pl.Float64)).all()
    assert d.spec.implicit and d.spec.label_columns == ["like", "rating"]


# -------------------------------------------------------------- movielens-1m

ML1M = {
    "ratings.dat": "1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n",
    "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n",
    "movies.dat": "10::GoldenEye (1995)::Action|Adventure\n20::Café (1993)::Comedy\n".encode(
        "latin-1"
    ),
}


def test_movielens_1m(tmp_path: Path) -> None:
    d = load_dataset("movielens-1m", _write(tmp_path, ML1M))
    assert d.interactions["like"].to_list() == [1.0, 0.0, 1.0]
    assert d.users.row(1, named=True) == {
        "user_id": "2",
        "age_band": "56",
        "gender": "M",
        "occupation": "16",
        "zip_region": "7",
    }
    assert d.items.drop("title").to_dicts() == [
        {"item_id": "10", "genres": ["Action", "Adventure"], "decade": "1990"},
        {"item_id": "20", "genres": ["Comedy"], "decade": "1990"},
    ]


@pytest.mark.parametrize(
    ("name", "content", "line", "reason"),
    [
        ("ratings.dat", "1::10::5::978300760\n1::20::x::9\n", 2, "column 'rating': 'x'"),
        ("ratings.dat", "1::10::5::978300760\n\n1::20::5\n", 3, "expected 4 fields"),
        ("ratings.dat", "1::10::5::978300760\n1::::5::9\n", 2, "column 'item_id': empty"),
        ("users.dat", "1::F::1::10::48067\n::M::56::16::70072\n", 2, "column 'user_id': empty"),
        ("movies.dat", b"10::GoldenEye (1995)::Action\n20::X::Comedy::\n", 2, "expected 3"),
    ],
    ids=["bad-number", "too-few-fields", "empty-item", "empty-user", "too-many-fields"],
)
def test_movielens_1m_bad_input(
    tmp_path: Path, name: str, content: str | bytes, line: int, reason: str
) -> None:
    _bad_input(tmp_path, "movielens-1m", ML1M | {name: content}, name, line, reason)


def test_movielens_1m_missing_file(tmp_path: Path) -> None:
    _missing_file(tmp_path, "movielens-1m", ML1M, "users.dat")


# ---------------------------------------------------------- movielens-latest

LATEST = {
    "ratings.csv": "userId,movieId,rating,timestamp\n"
    "1,1,4.0,964982703\n1,3,3.5,964981247\n2,1,5.0,964982224\n2,2,0.5,964983815\n"
    "3,99,4.5,964982931\n",
    "movies.csv": "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children\n"
    '2,"American President, The (1995)",Comedy|Drama\n'
    "3,Babylon 5,(no genres listed)\n"
    '4,"Amélie (Fabuleux destin d\'Amélie Poulain, Le) (2001)",Comedy|Romance\n',
    "tags.csv": "userId,movieId,tag,timestamp\n"
    '1,1,Pixar,1\n2,1,pixar ,2\n3,1,fun,3\n1,1,"toys, talking",4\n2,2,politics,5\n',
}


def test_movielens_latest(tmp_path: Path) -> None:
    d = load_dataset("movielens-latest", _write(tmp_path, LATEST), {"top_tags": 2})
    assert d.users["user_id"].to_list() == ["1", "2", "3"]
    assert list(d.users.columns) == ["user_id"]
    assert _features(d, "user") == {}
    assert _features(d, "item") == {
        "genres": FeatureKind.MULTI_HOT,
        "decade": FeatureKind.CATEGORICAL,
        "tags": FeatureKind.MULTI_HOT,
    }
    assert d.items.drop("title").to_dicts() == [
        {"item_id": "1", "genres": ["Adventure", "Animation", "Children"], "decade": "1990",
         "tags": ["pixar", "fun"]},
        {"item_id": "2", "genres": ["Comedy", "Drama"], "decade": "1990", "tags": ["politics"]},
        {"item_id": "3", "genres": [], "decade": "unknown", "tags": []},
        {"item_id": "4", "genres": ["Comedy", "Romance"], "decade": "2000", "tags": []},
        {"item_id": "99", "genres": None, "decade": None, "tags": None},  # rated, not in movies.csv
    ]  # fmt: skip
    i = d.interactions
    assert i["rating"].to_list() == [4.0, 3.5, 5.0, 0.5, 4.5]
    assert (i["like"] == (i["rating"] >= 4).cast(pl.Float64)).all()
    assert d.spec.implicit and d.spec.label_columns == ["like", "rating"]


def test_movielens_latest_without_tags(tmp_path: Path) -> None:
    files = {k: v for k, v in LATEST.items() if k != "tags.csv"}
    d = load_dataset("movielens-latest", _write(tmp_path, files))
    assert "tags" not in d.items.columns
    assert "tags" not in _features(d, "item")


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,9\n1,3,3.5\n", 3),
        ("ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,9\n1,3,good,9\n", 3),
        ("ratings.csv", "userId,movieId,rating\n1,1,4.0\n", 1),
        ("ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,9\n1,3,,9\n", 3),
        ("movies.csv", 'movieId,title,genres\n1,"A, B (1990)",Drama\n1,C (1991),Drama\n', 3),
        ("tags.csv", b"userId,movieId,tag,timestamp\n1,1,ok,1\n1,1,\xff\xfe,2\n", 3),
    ],
    ids=[
        "too-few-fields",
        "bad-number",
        "missing-column",
        "empty-rating",
        "duplicate-movie",
        "bad-bytes",
    ],
)
def test_movielens_latest_bad_input(
    tmp_path: Path, name: str, content: str | bytes, line: int
) -> None:
    data_dir = _write(tmp_path, LATEST | {name: content})
    raises_data_error(lambda: load_dataset("movielens-latest", data_dir), data_dir / name, line)


def test_movielens_latest_missing_file(tmp_path: Path) -> None:
    _missing_file(tmp_path, "movielens-latest", LATEST, "movies.csv")


# ------------------------------------------------------------------ homepage

HOMEPAGE = {
    "shop.dat": "1700000000|u1|i1|1\n1700000060|u1|i2|0\n1700000120|u2|i1|0\n1700000180|u3|i3|1\n",
    "user_feature.dat": "u1|a|b\nu2|c|\nu4|d|e\n",
    "item_feature.dat": "i1|x|y|z\ni2|x||w\n",
}


def test_homepage(tmp_path: Path) -> None:
    d = load_dataset("homepage", _write(tmp_path, HOMEPAGE))
    assert d.spec.implicit is False and d.spec.positive_label == "click"
    assert d.spec.label_columns == ["click"]
    assert _features(d, "user") == dict.fromkeys(("utag1", "utag2"), FeatureKind.CATEGORICAL)
    assert _features(d, "item") == dict.fromkeys(
        ("itag1", "itag2", "itag3"), FeatureKind.CATEGORICAL
    )
    assert d.interactions.to_dicts()[0] == {
        "user_id": "u1",
        "item_id": "i1",
        "ts": 1700000000,
        "click": 1.0,
    }
    assert d.interactions["click"].to_list() == [1.0, 0.0, 0.0, 1.0]
    assert d.users.rows() == [
        ("u1", "a", "b"),
        ("u2", "c", None),
        ("u4", "d", "e"),
        ("u3", None, None),
    ]
    assert d.items.rows() == [("i1", "x", "y", "z"), ("i2", "x", None, "w"), ("i3", None, None, None)]  # fmt: skip


def test_homepage_milliseconds(tmp_path: Path) -> None:
    files = HOMEPAGE | {"shop.dat": "1700000000123|u1|i1|1\n"}
    d = load_dataset("homepage", _write(tmp_path, files), {"ts_unit": "ms"})
    assert d.interactions["ts"].to_list() == [1700000000]


@pytest.mark.parametrize(
    ("name", "content", "line", "reason"),
    [
        ("shop.dat", "1|u1|i1|1\n2|u1|i2\n", 2, "expected 4 fields"),
        ("shop.dat", "1|u1|i1|1\n\nsoon|u1|i2|0\n", 3, "column 'ts'"),
        ("shop.dat", "1|u1|i1|1\n2|u1|i2|2\n", 2, "label 2 is not 0 or 1"),
        ("shop.dat", "1|u1|i1|1\n2||i2|0\n", 2, "column 'user_id': empty value"),
        ("shop.dat", b"1|u1|i1|1\n2|\xff\xfe|i2|0\n", 2, "bytes not decodable"),
        ("user_feature.dat", "u1|a|b\nu2|c|d|e\n", 2, "expected 3 fields"),
        ("user_feature.dat", "u1|a|b\nu2|c|d\nu1|e|f\n", 3, "duplicate user_id 'u1'"),
        ("item_feature.dat", "i1|x|y|z\n\ni1|x|y|z\n", 3, "duplicate item_id 'i1'"),
    ],
    ids=[
        "too-few-fields",
        "bad-number",
        "bad-label",
        "empty-id",
        "bad-bytes",
        "too-many-fields",
        "duplicate-user",
        "duplicate-item",
    ],
)
def test_homepage_bad_input(
    tmp_path: Path, name: str, content: str | bytes, line: int, reason: str
) -> None:
    _bad_input(tmp_path, "homepage", HOMEPAGE | {name: content}, name, line, reason)


def test_homepage_missing_file(tmp_path: Path) -> None:
    _missing_file(tmp_path, "homepage", HOMEPAGE, "item_feature.dat")


# ------------------------------------------------------------------- tabular

SCHEMA = """
name: shop
implicit: false
positive_label: click
interactions:
  path: interactions.{ext}
  user_id: uid
  item_id: iid
  ts: time
  labels:
    click: {{column: clicked}}
    purchase: {{column: bought, parent: click, score_weight: 4}}
users:
  path: users.{ext}
  features:
    age: {{kind: numeric}}
    city: {{kind: categorical}}
    interests: {{kind: multi_hot, separator: "|"}}
items:
  path: items.{ext}
  features:
    category: {{kind: categorical}}
    price: {{kind: numeric}}
"""

TABULAR_CSV = {
    "schema.yaml": SCHEMA.format(ext="csv"),
    "interactions.csv": "uid,iid,time,clicked,bought,note\n"
    "u1,i1,100,1,0,x\nu1,i2,200,0,0,y\nu2,i1,300,1,1,z\nu3,i3,400,0,0,\n",
    "users.csv": 'uid,age,city,interests\nu1,34,paris,"music| films"\nu2,,berlin,\n',
    "items.csv": "iid,category,price\ni1,shoes,9.5\ni2,hats,20\n",
}


def _tabular_parquet(directory: Path) -> Path:
    """The same tables as ``TABULAR_CSV``, in Parquet's own types."""
    directory.mkdir()
    (directory / "schema.yaml").write_text(SCHEMA.format(ext="parquet"))
    pl.DataFrame(
        {
            "uid": ["u1", "u1", "u2", "u3"],
            "iid": ["i1", "i2", "i1", "i3"],
            "time": (pl.Series([100, 200, 300, 400]) * 1000).cast(pl.Datetime("ms")),
            "clicked": [True, False, True, False],
            "bought": [0, 0, 1, 0],
        }
    ).write_parquet(directory / "interactions.parquet")
    pl.DataFrame(
        {
            "uid": ["u1", "u2"],
            "age": [34, None],
            "city": pl.Series(["paris", "berlin"], dtype=pl.Categorical),
            "interests": [["music", "films"], []],
        }
    ).write_parquet(directory / "users.parquet")
    pl.DataFrame(
        {"iid": ["i1", "i2"], "category": ["shoes", "hats"], "price": [9.5, 20.0]}
    ).write_parquet(directory / "items.parquet")
    return directory


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tabular(tmp_path: Path, fmt: str) -> None:
    data_dir = (
        _write(tmp_path / "d", TABULAR_CSV) if fmt == "csv" else _tabular_parquet(tmp_path / "d")
    )
    d = load_dataset("tabular", data_dir)
    assert d.spec.name == "shop" and d.spec.positive_label == "click"
    assert [(t.name, t.parent, t.score_weight) for t in d.spec.tasks] == [
        ("click", None, 1.0),
        ("purchase", "click", 4.0),
    ]
    assert _features(d, "user") == {
        "age": FeatureKind.NUMERIC,
        "city": FeatureKind.CATEGORICAL,
        "interests": FeatureKind.MULTI_HOT,
    }
    assert d.interactions.to_dicts()[2] == {
        "user_id": "u2",
        "item_id": "i1",
        "ts": 300,
        "click": 1.0,
        "purchase": 1.0,
    }
    assert d.users.rows() == [
        ("u1", 34.0, "paris", ["music", "films"]),
        ("u2", None, "berlin", []),
        ("u3", None, None, None),
    ]
    assert d.items.rows() == [("i1", "shoes", 9.5), ("i2", "hats", 20.0), ("i3", None, None)]


CONTEXT_SCHEMA = """
positive_label: click
interactions:
  path: interactions.csv
  labels: {click: {}}
  context:
    page: {kind: categorical, default: home}
    slot: {kind: categorical, column: pos, default: "0", position: true}
    anchor: {kind: item, column: anchor_iid}
    price_shown: {kind: numeric}
"""


def test_tabular_context_columns_reach_the_feature_map_and_the_encoded_impressions(
    tmp_path: Path,
) -> None:
    rows = "user_id,item_id,ts,click,page,pos,anchor_iid,price_shown\n" + "".join(
        f"u{n % 5},i{n % 7},{1000 + n},{n % 2},{('home', 'search')[n % 2]},{n % 3},"
        f"{'i1' if n % 4 == 0 else ''},{n / 10}\n"
        for n in range(60)
    )
    data_dir = _write(tmp_path, {"schema.yaml": CONTEXT_SCHEMA, "interactions.csv": rows})
    d = load_dataset("tabular", data_dir)
    context = {f.name: (f.kind, f.default, f.position) for f in d.spec.features_of("context")}
    assert context == {
        "page": (FeatureKind.CATEGORICAL, "home", False),
        "slot": (FeatureKind.CATEGORICAL, "0", True),
        "anchor": (FeatureKind.ITEM, None, False),
        "price_shown": (FeatureKind.NUMERIC, None, False),
    }
    assert d.interactions.row(4, named=True) | {"ts": 0} == {
        "user_id": "u4", "item_id": "i4", "ts": 0, "click": 0.0, "page": "home", "slot": "1",
        "anchor": "i1", "price_shown": 0.4,
    }  # fmt: skip
    assert d.interactions["anchor"].null_count() == 45
    result = etl.run(d, etl.EtlConfig(test_frac=0.2, valid_frac=0.1))
    fmap, inter = result.feature_map, result.interactions
    assert sorted(fmap.vocab["page"]) == ["home", "search"] and sorted(fmap.vocab["slot"]) == [
        "0",
        "1",
        "2",
    ]
    assert "price_shown" in fmap.numeric
    row = inter.filter(pl.col("anchor").is_not_null()).row(0, named=True)
    assert row["ctx_page"] == fmap.slot("page", row["page"])
    assert row["ctx_slot"] == fmap.slot("slot", row["slot"])
    assert row["ctx_hour"] == fmap.slot("hour", str(row["hour"]))
    items = result.items
    assert row["ctx_anchor"] == items.filter(pl.col("item_id") == "i1")["item_idx"][0]
    assert (inter.filter(pl.col("anchor").is_null())["ctx_anchor"] == 0).all()
    mean, std = fmap.numeric["price_shown"]
    np.testing.assert_allclose(
        inter["ctx_price_shown"].to_numpy(), (inter["price_shown"].to_numpy() - mean) / std,
        rtol=1e-6,
    )  # fmt: skip


def test_tabular_minimal_implicit_schema_given_as_option(tmp_path: Path) -> None:
    data_dir = _write(tmp_path / "d", {"log.csv": "user_id,item_id,ts\n1,7,5\n2,7,6\n"})
    schema = _write(
        tmp_path / "conf", {"s.yaml": "implicit: true\ninteractions: {path: log.csv}\n"}
    )
    d = load_dataset("tabular", data_dir, {"schema": str(schema / "s.yaml")})
    assert d.spec.implicit and d.spec.tasks == ()
    assert d.users["user_id"].to_list() == ["1", "2"]
    assert d.items["item_id"].to_list() == ["7"]


VECTORS_SCHEMA = """
implicit: true
interactions: {path: log.csv, ts_unit: ms}
users:
  path: users.csv
  features:
    embedding: {kind: vector, separator: " ", column: emb}
items:
  path: items.parquet
  features:
    emb: {kind: vector}
    tags: {kind: multi_hot}
    topics: {kind: multi_hot, separator: ";"}
"""


def _vectors(directory: Path, users: str, item_embs: list[list[float]]) -> Path:
    _write(directory, {"schema.yaml": VECTORS_SCHEMA, "users.csv": users})
    (directory / "log.csv").write_text("user_id,item_id,ts\n1,7,5000\n2,8,6999\n")
    pl.DataFrame(
        {"item_id": [7, 8], "emb": item_embs, "tags": [[1, None], []], "topics": ["a; b", None]}
    ).write_parquet(directory / "items.parquet")
    return directory


def test_tabular_vectors_and_list_columns(tmp_path: Path) -> None:
    data_dir = _vectors(tmp_path, "user_id,emb\n1,0.5 1.5\n2,\n", [[0.25, 1.0], [2.0, 3.0]])
    d = load_dataset("tabular", data_dir)
    assert d.interactions["ts"].to_list() == [5, 6]
    assert d.users.schema["embedding"] == pl.List(pl.Float32)
    assert d.users["embedding"].to_list() == [[0.5, 1.5], None]
    assert d.items.rows() == [
        ("7", [0.25, 1.0], ["1"], ["a", "b"]),
        ("8", [2.0, 3.0], [], []),
    ]


@pytest.mark.parametrize(
    ("users", "item_embs", "name", "line", "reason"),
    [
        ("user_id,emb\n1,0.5 x\n", [[1.0], [2.0]], "users.csv", 2,
         "column 'emb': ['0.5', 'x'] is not a valid List(Float32)"),
        ("user_id,emb\n1,0.5 1\n2,1 2 3\n", [[1.0], [2.0]], "users.csv", 3,
         "column 'emb': 3 values, expected 2"),
        ("user_id,emb\n1,0.5\n", [[1.0, 2.0], [3.0]], "items.parquet", None,
         "column 'emb': 1 values, expected 2 (row 2)"),
    ],
    ids=["bad-number", "csv-length", "parquet-length"],
)  # fmt: skip
def test_tabular_bad_vectors(
    tmp_path: Path,
    users: str,
    item_embs: list[list[float]],
    name: str,
    line: int | None,
    reason: str,
) -> None:
    data_dir = _vectors(tmp_path, users, item_embs)
    e = raises_data_error(lambda: load_dataset("tabular", data_dir), data_dir / name, line)
    assert e.reason == reason


@pytest.mark.parametrize(
    ("schema", "match"),
    [
        ("interactions: {path: i.csv, labels: {click: {colum: c}}}", "interactions.labels.click.colum"),
        ("interactions: {path: i.csv}\nuser: {path: u.csv}", "user"),
        ("interactions: {path: i.csv}\nitems: {path: x.csv, features: {a: {kind: sparse}}}", "items.features.a.kind"),
        ("positive_label: buy\ninteractions: {path: i.csv, labels: {click: {}}}", "positive_label 'buy'"),
        ("interactions: {path: i.csv, labels: {click: {}}}", "impressions need a positive_label"),
        ("implicit: true\ninteractions: {path: i.csv, labels: {b: {parent: a}, a: {}}}", "parent 'a'"),
        ("implicit: true\ninteractions: {path: i.json}", "unknown file type '.json'"),
        ("- a list", "expected a mapping"),
        ("implicit: true\ninteractions: {path: i.csv, context: {tags: {kind: multi_hot}}}", "context.tags.kind"),
        ("implicit: true\ninteractions: {path: i.csv, context: {slot: {kind: categorical, position: true}}}", "position feature 'slot'"),
        ("implicit: true\ninteractions: {path: i.csv, context: {hour: {kind: numeric}}}", "context.hour: name already used"),
        ("implicit: true\ninteractions: {path: i.csv, context: {a: {kind: item}, b: {kind: item}}}", "at most one anchor"),
    ],
    ids=["unknown-key", "unknown-section", "bad-kind", "bad-positive-label", "no-positive-label",
         "parent-order", "file-type", "not-a-mapping", "context-kind", "position-default",
         "context-name", "two-anchors"],
)  # fmt: skip
def test_tabular_bad_schema(tmp_path: Path, schema: str, match: str) -> None:
    data_dir = _write(tmp_path, {"schema.yaml": schema, "i.json": "{}"})
    with pytest.raises(ConfigError, match=match):
        load_dataset("tabular", data_dir)


def test_tabular_missing_schema(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="schema.yaml: config file not found"):
        load_dataset("tabular", tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "line", "reason"),
    [
        ("interactions.csv", "uid,iid,time,clicked,bought\nu1,i1,100,1,0\nu1,i2,200,0\n", 3,
         "expected 5 fields, found 4"),
        ("interactions.csv", "uid,iid,time,clicked,bought\nu1,i1,100,1,0\nu1,i2,later,0,0\n", 3,
         "column 'time': 'later' is not a valid Int64"),
        ("interactions.csv", "uid,iid,time,clicked\nu1,i1,100,1\n", 1, "missing column 'bought'"),
        ("interactions.csv", "uid,iid,time,clicked,bought\nu1,i1,100,1,0\nu1,,200,0,0\n", 3,
         "column 'iid': empty value"),
        ("users.csv", b"uid,age,city,interests\nu1,34,\xff\xfe,\n", 2, "bytes not decodable"),
        ("users.csv", "uid,age,city,interests\nu1,34,paris,\n\nu1,35,rome,\n", 4,
         "duplicate user_id 'u1'"),
    ],
    ids=["too-few-fields", "bad-number", "missing-column", "empty-id", "bad-bytes", "duplicate-id"],
)  # fmt: skip
def test_tabular_csv_bad_input(
    tmp_path: Path, name: str, content: str | bytes, line: int, reason: str
) -> None:
    _bad_input(tmp_path, "tabular", TABULAR_CSV | {name: content}, name, line, reason)


def test_tabular_csv_missing_file(tmp_path: Path) -> None:
    _missing_file(tmp_path, "tabular", TABULAR_CSV, "items.csv")


def test_tabular_parquet_missing_file(tmp_path: Path) -> None:
    data_dir = _tabular_parquet(tmp_path / "d")
    (data_dir / "users.parquet").unlink()
    e = raises_data_error(
        lambda: load_dataset("tabular", data_dir), data_dir / "users.parquet", None
    )
    assert e.reason == "file not found"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (pl.DataFrame({"iid": ["i1"], "category": ["shoes"]}), "missing column 'price'"),
        (pl.DataFrame({"iid": ["i1", "i2"], "category": ["a", "b"], "price": ["9.5", "cheap"]}),
         "column 'price': 'cheap' is not a valid Float64 (row 2)"),
        (pl.DataFrame({"iid": ["i1"], "category": [["a"]], "price": [1.0]}),
         "column 'category' is List(String), expected a scalar"),
        (pl.DataFrame({"iid": ["i1", "i1"], "category": ["a", "b"], "price": [1.0, 2.0]}),
         "duplicate item_id 'i1' (row 2)"),
        (None, "not a readable Parquet file"),
    ],
    ids=["missing-column", "bad-number", "list-for-scalar", "duplicate-id", "not-parquet"],
)  # fmt: skip
def test_tabular_parquet_bad_input(tmp_path: Path, frame: pl.DataFrame | None, reason: str) -> None:
    data_dir = _tabular_parquet(tmp_path / "d")
    path = data_dir / "items.parquet"
    if frame is None:
        path.write_bytes(b"PAR1 this is not parquet")
    else:
        frame.write_parquet(path)
    e = raises_data_error(lambda: load_dataset("tabular", data_dir), path, None)
    assert e.reason.startswith(reason)
