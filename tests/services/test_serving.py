"""``shared.serving``: loading a bundle for serving, its refusals, and the array helpers."""

from __future__ import annotations

import dataclasses
import json

import faiss
import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.bundle import Files
from shared.errors import BundleError
from shared.serving import SeenItems, ServingBundle, merge_candidates
from tests.services.conftest import BuiltBundle, OfflineScorer


@pytest.fixture(scope="module")
def served(built: BuiltBundle) -> ServingBundle:
    return ServingBundle.load(built.artifacts, built.version)


def test_load_gives_every_part(served: ServingBundle, built: BuiltBundle) -> None:
    users, items = built.users(), built.items()
    assert served.version == built.version
    assert served.ranker_kind == "dcn"
    assert len(served.tables.users) == users.height + 1
    assert served.index.ntotal == items.height
    assert served.score_weights == built.score_weights()
    assert set(served.tasks) >= set(served.score_weights)
    # the memory hot list: the published global_hot first, then the rest of the catalogue
    published = pl.read_parquet(built.root / Files.HOT)["item_idx"].to_list()
    assert served.hot[: len(published)].tolist() == published
    assert sorted(served.hot.tolist()) == list(range(1, items.height + 1))


def test_deepfm_is_served_when_asked(built: BuiltBundle) -> None:
    assert (
        ServingBundle.load(built.artifacts, built.version, ranker="deepfm").ranker.kind == "deepfm"
    )


def test_seen_items_match_the_interactions(served: ServingBundle, built: BuiltBundle) -> None:
    for uid in built.users()["user_id"].head(5):
        row = served.user_row(uid)
        assert set(served.item_ids[served.seen.of(row)].tolist()) == built.seen(uid)
    assert len(served.seen.of(0)) == 0


def test_seen_csr_from_pairs() -> None:
    seen = SeenItems.build(np.array([2, 1, 2, 2]), np.array([5, 3, 1, 5]), n_users=4, n_items=6)
    assert seen.of(0).tolist() == [] and seen.of(1).tolist() == [3]
    assert seen.of(2).tolist() == [1, 5] and seen.of(3).tolist() == []


def test_item_rows_mark_unknown_ids_zero(served: ServingBundle) -> None:
    ids = served.item_ids[[3, 1, 2]].tolist()
    assert served.item_rows([*ids, "no-such-item", ""]).tolist() == [3, 1, 2, 0, 0]
    assert served.item_rows([]).tolist() == []


def test_scores_are_the_offline_models(served: ServingBundle, built: BuiltBundle) -> None:
    rng = np.random.default_rng(0)
    n = 64
    users = rng.integers(0, len(served.tables.users), n)
    items = rng.integers(1, len(served.item_ids), n)
    hour, dow = rng.integers(0, 24, n), rng.integers(0, 7, n)
    expected, probs = OfflineScorer(built).score(users, items, hour, dow)
    assert served.retrieval_weight > 0  # the blended final score is what is checked
    got = served.score(users, items, hour, dow)
    np.testing.assert_allclose(got.score, expected, atol=1e-5)
    for j, task in enumerate(served.tasks):
        np.testing.assert_allclose(got.probs[:, j], probs[task], atol=1e-5)


def test_search_never_returns_faiss_padding(served: ServingBundle) -> None:
    rows = served.search(user_row=1, k=10_000)  # more than the catalogue
    assert len(rows) == served.index.ntotal and rows.min() >= 1
    # an index holding 3 items answers a k=50 query with 47 × -1 padding
    small = faiss.IndexFlatIP(served.index.d)
    small.add(served.index.reconstruct_n(0, 3))
    few = dataclasses.replace(served, index=small).search(user_row=1, k=50)
    assert sorted(few.tolist()) == [1, 2, 3]


@given(
    primary=st.lists(st.integers(-1, 30), max_size=40),
    exclude=st.lists(st.integers(1, 30), max_size=15, unique=True),
    n=st.integers(1, 40),
)
def test_merge_candidates(primary: list[int], exclude: list[int], n: int) -> None:
    fallback = np.arange(30, 0, -1)  # every item 1..30, "hottest" first
    out = merge_candidates(
        np.asarray(primary, dtype=np.int64), fallback, np.asarray(exclude, dtype=np.int64), n
    ).tolist()
    usable = 30 - len(exclude)
    assert len(out) == min(n, usable)  # padded from the fallback as far as it goes
    assert len(set(out)) == len(out) and min(out, default=1) >= 1
    assert not set(out) & set(exclude)
    # the primary list's usable ids come first, in their first-seen order
    firsts = list(dict.fromkeys(p for p in primary if p >= 1 and p not in exclude))
    assert out[: len(firsts)] == firsts[: len(out)]


# --- refusals ------------------------------------------------------------------------------


def test_missing_version_is_refused(built: BuiltBundle) -> None:
    with pytest.raises(BundleError, match="no bundle of version"):
        ServingBundle.load(built.artifacts, "19990101T000000Z-000000")
    with pytest.raises(BundleError, match="not a bundle version"):
        ServingBundle.load(built.artifacts, "../elsewhere")


def test_corrupt_file_is_refused(built: BuiltBundle) -> None:
    version = built.derive("corrupt")
    path = built.artifacts / version / (Files.RANKER.format(kind="dcn") + ".safetensors")
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BundleError, match="sha256 does not match"):
        ServingBundle.load(built.artifacts, version)


def test_partial_bundle_is_refused(built: BuiltBundle) -> None:
    def drop_index(root):  # noqa: ANN001, ANN202
        manifest = json.loads((root / Files.MANIFEST).read_text())
        del manifest["files"][Files.INDEX]
        (root / Files.MANIFEST).write_text(json.dumps(manifest))
        return ()

    version = built.derive("partial", drop_index)
    with pytest.raises(BundleError, match=f"lacks {Files.INDEX}"):
        ServingBundle.load(built.artifacts, version)


def test_foreign_bundle_is_refused(built: BuiltBundle) -> None:
    def foreign(root):  # noqa: ANN001, ANN202
        manifest = json.loads((root / Files.MANIFEST).read_text())
        manifest["format"] = "somebody-else/3"
        (root / Files.MANIFEST).write_text(json.dumps(manifest))
        return ()

    version = built.derive("foreign", foreign)
    with pytest.raises(BundleError, match="foreign or corrupt manifest"):
        ServingBundle.load(built.artifacts, version)


def test_copied_bundle_under_another_name_is_refused(built: BuiltBundle) -> None:
    target = built.artifacts / "renamed"
    built.derive("renamed-src")
    (built.artifacts / "renamed-src").rename(target)
    with pytest.raises(BundleError, match="manifest names version"):
        ServingBundle.load(built.artifacts, "renamed")


def test_models_of_another_bundle_are_refused(built: BuiltBundle) -> None:
    def shrink_index(root):  # noqa: ANN001, ANN202
        index = faiss.read_index(str(root / Files.INDEX))
        small = faiss.IndexFlatIP(index.d)
        small.add(index.reconstruct_n(0, 5))
        faiss.write_index(small, str(root / Files.INDEX))
        return (Files.INDEX,)

    version = built.derive("mismatch", shrink_index)
    with pytest.raises(BundleError, match="5 vectors"):
        ServingBundle.load(built.artifacts, version)
