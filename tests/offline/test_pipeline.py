"""The worker end to end on tiny synthetic data: every step, the bundle, the report."""

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import pytest
import redis

from offline import pipeline
from offline.config import load_config
from offline.index import IndexConfig
from shared.bundle import Bundle, Files
from shared.keys import Keys
from shared.recall import SeenItems

TINY = {
    "dataset_options": {"n_users": 150, "n_items": 80, "n_impressions": 6000, "seed": 3},
    # a derived clock feature and a hashed multi-hot one, served by the whole stack
    "etl": {"derived": ["is_weekend"], "hash_buckets": {"tags": 16}},
    "retrieval": {"trainer": {"epochs": 2, "batch_size": 256}},
    # both rankers (the default trains DCN-v2 alone)
    "ranking": {
        "models": ["dcn", "deepfm"],
        "hidden": [32],
        "pos_weight": {"click": 2.0},  # weighted BCE, trained in CI
        # architecture variants exported and served by the whole stack
        "deep_block": "residual",
        "dcn": {"layer_norm": True, "low_rank": 8},
        "trainer": {"epochs": 2, "batch_size": 512, "checkpoint_every": 1},
    },
    "evaluate": {"samples": 2, "sampled_negatives": 50, "diagnostic_items": 40},
}


def _run(artifacts: Path, redis_url: str, steps: tuple[str, ...]) -> list[str]:
    config = load_config(None, **TINY)
    ctx = pipeline.Context(
        config=config, artifacts=artifacts, redis_url=redis_url, key_prefix="pipe:"
    )
    return [line for step in steps for line in pipeline.run_step(step, ctx)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, redis_server) -> tuple[Bundle, list[str]]:
    artifacts = tmp_path_factory.mktemp("artifacts")
    lines = _run(artifacts, redis_server.url, ("run",))
    return Bundle.open(artifacts), lines


def test_training_resumes_from_the_bundles_checkpoints(bundle, redis_server, tmp_path) -> None:
    shared, _ = bundle
    assert (shared.root / "runs" / "dcn.ckpt").is_file()
    assert (shared.root / "runs" / "refit" / "dcn.ckpt").is_file()
    shutil.copytree(shared.root, tmp_path / shared.root.name)  # the module's bundle stays as is
    b = Bundle.open(tmp_path, shared.version)
    history = json.loads(b.path(Files.HISTORY).read_text())["dcn"]
    ctx = pipeline.Context(
        config=load_config(None, **TINY), artifacts=tmp_path, redis_url=redis_server.url,
        key_prefix="pipe:", version=b.version, resume=True,
    )  # fmt: skip
    lines = list(pipeline.run_step("train-ranking", ctx))
    again = json.loads(b.path(Files.HISTORY).read_text())["dcn"]
    # nothing left to train: the checkpoint's own epochs, timings included (a new run's differ)
    assert again["epochs"] == history["epochs"]
    assert any("train-ranking: dcn best valid AUC" in line for line in lines)


def test_run_writes_a_complete_verified_bundle(bundle) -> None:
    b, lines = bundle
    manifest = b.verify(
        required=(Files.TWO_TOWER + ".safetensors", Files.RANKER.format(kind="dcn") + ".json",
                  Files.RANKER.format(kind="deepfm") + ".safetensors", Files.INDEX, Files.RECALL,
                  Files.HOT, Files.METRICS, Files.REPORT, "training_curves.png", Files.USER_TOWER,
                  Files.RANKER_HEAD.format(kind="dcn"), Files.RANKER_HEAD.format(kind="deepfm"),
                  Files.PROBES)
    )  # fmt: skip
    assert manifest["serving"]["rankers"] == ["dcn", "deepfm"]
    assert set(manifest["metrics"]["baselines"]) == {
        "recent popularity",
        "EASE (λ 200)",
        "item-kNN (100)",
    }
    assert "## Against strong baselines" in b.path(Files.REPORT).read_text()
    assert lines[-1].startswith(f"publish: version {b.version} is active")
    # every step records the effective config it ran with
    assert list(manifest["steps"]) == list(pipeline.STEP_FUNCTIONS)
    for name, step in manifest["steps"].items():  # and its time and peak memory
        assert step["seconds"] >= 0 and step["peak_rss_mib"] > 50, name
    config = load_config(None, **TINY).model_dump(mode="json")
    assert manifest["steps"]["train-retrieval"]["config"] == {"retrieval": config["retrieval"]}
    assert manifest["steps"]["etl"]["config"]["dataset_options"] == TINY["dataset_options"]


def test_metrics_cover_retrieval_baseline_ranking_oracle_and_index(bundle) -> None:
    b, _ = bundle
    m = json.loads(b.path(Files.METRICS).read_text())
    for block in ("retrieval", "popularity"):
        assert {"recall@50", "ndcg@10", "map@10", "mrr", "hitrate@10", "coverage", "ild@10"} <= m[
            block
        ].keys()
    assert m["ranked"].keys() == m["ranker_only"].keys() == {"dcn", "deepfm"}
    grid = set(load_config(None).ranking.retrieval_weight_grid)
    for kind, weight in b.manifest()["serving"]["retrieval_weights"].items():
        assert weight in grid and m["ranked"][kind]["retrieval_weight"] == weight
        if weight == 0:  # the served order is the ranker's own
            assert m["ranked"][kind]["ndcg@10"] == m["ranker_only"][kind]["ndcg@10"]
    assert {"auc", "logloss"} <= m["ranking"]["dcn"]["click"].keys()
    assert "auc_given_parent" in m["ranking"]["deepfm"]["purchase"]
    assert 0.5 < m["oracle"]["click_auc"] <= 1.0
    assert m["index"]["recall_vs_exact"] == 1.0
    # synthetic data: every top 10 priced by the world's true probabilities
    value = m["list_value"]
    assert value.keys() == {"oracle", "retrieval", "ranked dcn", "ranker alone dcn",
                            "ranked deepfm", "ranker alone deepfm"}  # fmt: skip
    for name, v in value.items():
        assert 0 < v["clicks"] <= value["oracle"]["clicks"] + 1e-9, name
        assert 0 < v["purchases"] <= value["oracle"]["purchases"] + 1e-9, name
    report = b.path(Files.REPORT).read_text()
    assert "dcn" in report and "deepfm" in report and "## Sample recommendations" in report
    assert "## What ranking adds" in report
    assert "- items_read: 40" in report  # the diagnostics read an even sample of 40 items
    diag = m["diagnostics"]
    assert diag["items_read"] == 40 and diag["users_read"] == m["test_users"]
    assert diag["user_alignment"].keys() == {"age_band", "gender", "region", "device"}
    assert diag["category_hits"].keys() == {"category", "brand", "price_band", "tags"}
    for entry in (*diag["user_alignment"].values(), *diag["category_hits"].values()):
        assert all(0 <= v <= 1 for v in entry.values())
    found = diag["score_correlation"]
    assert 0 < len(found) <= 10 and all(-1 <= c["r"] <= 1 and 0 <= c["p"] <= 1 for c in found)
    assert [abs(c["r"]) for c in found] == sorted((abs(c["r"]) for c in found), reverse=True)
    assert "Pearson r" in report and "Category hits" in report
    # the sampled protocol, apart and labelled: far easier than the full catalogue
    sampled = m["sampled"]
    assert sampled["negatives"] == 50
    assert sampled.keys() == {"negatives", "retrieval", "ranked dcn", "ranked deepfm"}
    assert sampled["retrieval"]["hitrate@10"] > m["retrieval"]["hitrate@10"]
    assert 0 < sampled["retrieval"]["ndcg@10"] <= sampled["retrieval"]["hitrate@10"]


def test_publish_flipped_the_active_version(bundle, redis_server) -> None:
    b, _ = bundle
    client = redis.Redis.from_url(redis_server.url)
    keys = Keys("pipe:")
    assert client.get(keys.active).decode() == b.version
    assert client.zcard(keys.global_hot(b.version)) > 0
    client.close()


def test_same_config_gives_the_same_metrics(bundle, tmp_path, redis_server) -> None:
    b, _ = bundle
    _run(
        tmp_path, redis_server.url, ("etl", "train-retrieval", "train-ranking", "index", "evaluate")
    )
    first = json.loads(b.path(Files.METRICS).read_text())
    again = json.loads(Bundle.open(tmp_path).path(Files.METRICS).read_text())
    for block in ("retrieval", "ranked", "ranking"):
        assert again[block] == first[block]


def test_served_weights_are_refit_on_every_interaction(bundle) -> None:
    b, lines = bundle
    manifest = b.manifest()
    refit = manifest["serving"]["refit"]
    n = json.loads(b.path(Files.ETL_STATS).read_text())["interactions"]
    history = json.loads(b.path(Files.HISTORY).read_text())
    assert refit["epochs"] == {k: history[k]["best_epoch"] for k in ("two_tower", "dcn", "deepfm")}
    assert refit["interactions"] == n
    assert any(line.startswith("refit: every model retrained") for line in lines)
    assert "## Served weights" in b.path(Files.REPORT).read_text()
    b.verify()  # the refit models, index and export are hashed into the manifest


def test_popularity_prior_is_chosen_on_validation_and_kept_by_the_refit(bundle) -> None:
    b, lines = bundle
    served = json.loads(b.path(Files.TWO_TOWER + ".json").read_text())["config"]
    assert served["popularity_prior"] in load_config(None).retrieval.popularity_prior_grid
    beta = served["popularity_prior"]
    assert any(
        line.startswith(f"train-retrieval: popularity prior {beta:g} (valid recall@")
        for line in lines
    )
    # the serving vectors carry the prior's coordinates: O + 2 wide, items' log q, then
    # new items' predicted spread around the mean (0 for trained ones), its weight γ
    # kept by the refit
    items = np.load(b.path(Files.ITEM_EMBEDDINGS))
    assert items.shape[1] == served["out_dim"] + 2 and (items[1:, -2] < 0).all()
    assert served["content_prior"] is not None and served["content_prior_l2"] > 0


def test_refit_can_be_switched_off(bundle, redis_server) -> None:
    b, _ = bundle
    ctx = pipeline.Context(
        config=load_config(None, **TINY, serving={"refit": False}),
        artifacts=b.root.parent, redis_url=redis_server.url, version=b.version,
    )  # fmt: skip
    assert list(pipeline.run_step("refit", ctx)) == [
        "refit: off (serving.refit); serving the evaluated weights"
    ]


def test_steps_after_etl_replace_files_atomically(bundle, redis_server) -> None:
    b, _ = bundle
    names = (Files.INDEX, Files.ITEM_EMBEDDINGS, Files.USER_EMBEDDINGS, Files.RECALL, Files.HOT,
             Files.PROBES, Files.USER_TOWER, Files.RANKER_HEAD.format(kind="dcn"),
             Files.RANKER_SPLIT.format(kind="dcn", part="item_fields"))  # fmt: skip
    before = {name: b.path(name).stat().st_ino for name in names}
    ctx = pipeline.Context(
        config=load_config(None, **TINY), artifacts=b.root.parent, redis_url=redis_server.url,
        version=b.version,
    )  # fmt: skip
    for step in ("index", "export"):
        list(pipeline.run_step(step, ctx))
    # each a new file renamed over the old one: a reader sees the old file or the new one
    assert {name: b.path(name).stat().st_ino for name in names} != before
    assert all(b.path(name).stat().st_ino != before[name] for name in names)
    assert not [p.name for p in b.root.iterdir() if p.name.startswith(".")]  # no temporaries
    b.verify()


def test_sample_lists_name_items_by_their_titles() -> None:
    items = pl.DataFrame({"item_id": ["7", "9"], "item_idx": [2, 1], "title": ["Heat", None]})
    assert pipeline.item_names(items, 3).tolist() == ["", "9 ", "7 Heat"]
    assert pipeline.item_names(items.drop("title"), 3) is None


def test_batch_recall_in_blocks_of_users_lists_what_one_block_lists(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    items, users = rng.normal(size=(60, 8)).astype(np.float32), rng.normal(size=(9, 8))
    index = faiss.IndexFlatIP(8)
    index.add(items)
    counts = rng.integers(0, 12, 10)  # users seen very unequally: each block searches its own depth
    user_rows = np.repeat(np.arange(10), counts)
    seen = SeenItems.build(user_rows, rng.integers(1, 61, len(user_rows)), 10, 61)
    config = IndexConfig(recall_k=15)
    rows = np.arange(1, 10)
    whole = pipeline._batch_recall(index, users, rows, seen, np.arange(1, 6), config)
    monkeypatch.setattr(pipeline, "RECALL_BLOCK", 2)
    blocked = pipeline._batch_recall(index, users, rows, seen, np.arange(1, 6), config)
    np.testing.assert_array_equal(blocked, whole)
    assert not seen.contains(rows, whole).any() and (whole > 0).all()
