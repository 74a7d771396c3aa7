"""``services.gateway.bundle``: loading a bundle for serving, its scores, its refusals."""

from __future__ import annotations

import dataclasses
import json

import faiss
import numpy as np
import polars as pl
import pytest

from services.gateway.bundle import ServingBundle
from shared.bundle import Files
from shared.errors import BundleError
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


def test_item_rows_mark_unknown_ids_zero(served: ServingBundle) -> None:
    ids = served.item_ids[[3, 1, 2]].tolist()
    assert served.item_rows([*ids, "no-such-item", ""]).tolist() == [3, 1, 2, 0, 0]
    assert served.item_rows([]).tolist() == []


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_scores_are_the_offline_models(built: BuiltBundle, runtime: str) -> None:
    served = ServingBundle.load(built.artifacts, built.version, runtime=runtime)
    assert served.runtime == runtime
    assert served.retrieval_weight > 0  # the blended final score is what is checked
    assert served.user_tower.config.popularity_prior > 0  # with the prior in its logit
    rng = np.random.default_rng(0)
    offline = OfflineScorer(built)
    # every user row (the unknown one too); the whole catalogue, so some of the items
    # sit in the user's own history and take the masked-history path
    for user in [0, *rng.integers(1, len(served.tables.users), 6).tolist()]:
        items = np.arange(1, len(served.item_ids))
        hour, dow = int(rng.integers(0, 24)), int(rng.integers(0, 7))
        expected, probs = offline.score(np.full(len(items), user), items, hour, dow)
        got = served.score(user, items, served.tables.context_of({}, hour, dow))
        np.testing.assert_allclose(got.score, expected, atol=1e-5, rtol=0)
        for j, task in enumerate(served.tasks):
            np.testing.assert_allclose(got.probs[:, j], probs[task], atol=1e-5, rtol=0)


def test_some_scored_items_sit_in_their_users_history(served: ServingBundle) -> None:
    # what makes the test above cover the masked-history path
    history = served.tables.history[1:]
    assert (history > 0).any()


def test_a_bundle_without_an_onnx_export_is_served_by_torch(built: BuiltBundle) -> None:
    def drop_export(root):  # noqa: ANN001, ANN202
        manifest = json.loads((root / Files.MANIFEST).read_text())
        exported = [
            n
            for n in manifest["files"]
            if n.startswith("ranker_dcn.") and n[-4:] in ("onnx", ".npy")
        ]
        for name in exported:
            del manifest["files"][name]
            (root / name).unlink()
        (root / Files.MANIFEST).write_text(json.dumps(manifest))
        return ()

    version = built.derive("no-export", drop_export)
    assert ServingBundle.load(built.artifacts, version).runtime == "torch"


def test_vectors_are_memory_mapped(served: ServingBundle) -> None:
    for array in (served.user_vectors, served.item_vectors, served.split.item_fields):
        assert isinstance(array.base, np.memmap) and not array.flags.writeable


def test_search_never_returns_faiss_padding(served: ServingBundle) -> None:
    rows = served.search(user_row=1, k=10_000)  # more than the catalogue
    assert len(rows) == served.index.ntotal and rows.min() >= 1
    # an index holding 3 items answers a k=50 query with 47 × -1 padding
    small = faiss.IndexFlatIP(served.index.d)
    small.add(served.index.reconstruct_n(0, 3))
    few = dataclasses.replace(served, index=small).search(user_row=1, k=50)
    assert sorted(few.tolist()) == [1, 2, 3]


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


@pytest.mark.parametrize("tampered", [False, True])
def test_probes_of_bundles_from_before_request_context_still_prove_them(
    built: BuiltBundle, tampered: bool
) -> None:
    # a probe set as the worker wrote it before context features: an hour and a day only
    offline = OfflineScorer(built)
    entries = json.loads((built.root / Files.PROBES).read_text())["dcn"]

    def old_format(root):  # noqa: ANN001, ANN202
        old = []
        for entry in entries:
            user, rows = entry["user_row"], np.asarray(entry["item_rows"])
            score, probs = offline.score(np.full(len(rows), user), rows, 13, 4)
            tasks = list(probs)
            old.append({
                "user_row": user, "hour": 13, "dow": 4, "item_rows": rows.tolist(),
                "score": (score + (0.01 if tampered else 0.0)).tolist(),
                "probs": np.stack([probs[t] for t in tasks], axis=1).tolist(),
            })  # fmt: skip
        (root / Files.PROBES).write_text(json.dumps({"dcn": old}))
        return (Files.PROBES,)

    version = built.derive(f"old-probes-{tampered}", old_format)
    if tampered:
        with pytest.raises(BundleError, match="probe"):
            ServingBundle.load(built.artifacts, version, ranker="dcn")
    else:
        assert ServingBundle.load(built.artifacts, version, ranker="dcn").version == version
