import polars as pl
import pytest

from shared.errors import BundleError
from shared.feature_map import PAD, FeatureMap


@pytest.fixture
def fmap() -> FeatureMap:
    return FeatureMap.fit(
        {
            "color": pl.Series("color", ["red", "blue", "red", None, "green"]),
            "tags": pl.Series("tags", [["a", "b"], [], None, ["b"], ["c", "b"]]),
        },
        {"price": pl.Series("price", [1.0, 2.0, 3.0])},
        min_count=1,
    )


def test_slots_are_distinct_and_skip_padding(fmap: FeatureMap) -> None:
    slots = [fmap.oov(c) for c in fmap.columns()]
    slots += [fmap.slot(c, v) for c in fmap.columns() for v in fmap.vocab[c]]
    assert PAD not in slots
    assert len(set(slots)) == len(slots) == fmap.size - 1


def test_unseen_and_null_values_map_to_their_columns_oov(fmap: FeatureMap) -> None:
    enc = fmap.encode("color", pl.Series(["red", "purple", None]))
    assert enc[0] == fmap.slot("color", "red")
    assert list(enc[1:]) == [fmap.oov("color")] * 2
    assert fmap.slot("color", "purple") == fmap.oov("color") != fmap.oov("tags")


def test_lists_are_truncated_and_padded(fmap: FeatureMap) -> None:
    out = fmap.encode_lists("tags", pl.Series([["b", "zzz", "a"], [], None, ["c"]]), max_len=2)
    assert out.shape == (4, 2)
    assert list(out[0]) == [fmap.slot("tags", "b"), fmap.oov("tags")]
    assert list(out[1]) == [PAD, PAD] and list(out[2]) == [PAD, PAD]
    assert list(out[3]) == [fmap.slot("tags", "c"), PAD]


def test_min_count_sends_rare_values_to_oov() -> None:
    fmap = FeatureMap.fit({"c": pl.Series("c", ["x", "x", "y"])}, min_count=2)
    assert fmap.vocab["c"] == ["x"]
    assert fmap.slot("c", "y") == fmap.oov("c")


def test_round_trip_keeps_every_slot(fmap: FeatureMap, tmp_path) -> None:
    fmap.save(tmp_path / "fm.json")
    back = FeatureMap.load(tmp_path / "fm.json")
    assert back.fingerprint == fmap.fingerprint and back.size == fmap.size
    values = pl.Series(["red", "blue", "green", "nope"])
    assert (back.encode("color", values) == fmap.encode("color", values)).all()
    assert back.standardize("price", pl.Series([2.0]))[0] == pytest.approx(0.0)


def test_tampered_map_is_refused(fmap: FeatureMap, tmp_path) -> None:
    path = tmp_path / "fm.json"
    fmap.save(path)
    path.write_text(path.read_text().replace('"red"', '"rot"'))
    with pytest.raises(BundleError, match="fingerprint"):
        FeatureMap.load(path)


def test_hashed_columns_bucket_every_value_stably(tmp_path) -> None:
    values = pl.Series("sku", [f"sku-{i}" for i in range(1000)])
    fmap = FeatureMap.fit({"color": pl.Series("color", ["red"]), "sku": values}, hashed={"sku": 16})
    assert "sku" not in fmap.vocab and fmap.width("sku") == 16
    assert fmap.size == 1 + (1 + 1) + (1 + 16)
    slots = fmap.encode("sku", pl.Series([*values, "never-seen", None]))
    first = fmap.oov("sku") + 1
    assert set(slots[:-1]) <= set(range(first, first + 16)) and len(set(slots[:1000])) == 16
    assert slots[-1] == fmap.oov("sku")  # a missing value is still out-of-vocabulary
    assert [fmap.slot("sku", v) for v in ("sku-3", "never-seen")] == list(slots[[3, 1000]])
    fmap.save(tmp_path / "fm.json")  # crc32 buckets: the same in every process
    back = FeatureMap.load(tmp_path / "fm.json")
    assert back.hashed == {"sku": 16} and (back.encode("sku", values) == slots[:1000]).all()
    lists = back.encode_lists("sku", pl.Series([["sku-3", "x"]]), max_len=2)
    assert list(lists[0]) == [slots[3], back.slot("sku", "x")]


def test_maps_without_hashed_columns_keep_their_fingerprint(fmap: FeatureMap) -> None:
    assert "hashed" not in fmap.to_dict()  # bundles written before hashing still load
