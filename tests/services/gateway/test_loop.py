"""The whole loop on one machine: simulated visits → events → ingest → a retrain on them."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import redis

from offline import pipeline
from offline.config import load_config
from offline.datasets import load_dataset
from offline.datasets.synthetic import SyntheticConfig
from offline.ingest import Ingestor
from offline.simulate import simulate
from shared.bundle import Files
from tests.services.conftest import CONFIG, BuiltBundle
from tests.services.gateway.conftest import MakeGateway


def test_simulated_feedback_is_logged_ingested_and_learned_from(
    make_gateway: MakeGateway, scratch_url: str, built: BuiltBundle, tmp_path: Path
) -> None:
    gateway = make_gateway(scratch_url, scorer="process")
    seen = pl.read_parquet(built.root / Files.INTERACTIONS, columns=["user_id", "item_id"])
    options = SyntheticConfig(**CONFIG["dataset_options"])
    report = simulate(str(gateway.client.base_url), options, visits=40, seen=seen)
    assert report.visits == 40 and report.impressions == 400
    assert 0 < report.expected_clicks <= report.oracle_clicks
    assert report.purchases <= report.clicks <= report.impressions
    assert any("of its clicks" in line for line in report.lines())

    client = redis.Redis.from_url(scratch_url)
    try:
        with Ingestor(client, tmp_path / "events") as ingestor:
            read = sum(n for n, _, _ in ingestor.run())
    finally:
        client.close()
    assert (
        read
        == report.impressions
        + report.clicks
        + (
            # carts are drawn between clicks and purchases: count them from the log
            pl.concat([pl.read_parquet(p) for p in (tmp_path / "events").glob("*/*.parquet")])
            .filter(pl.col("type") == "add_to_cart")
            .height
        )
        + report.purchases
    )

    options = {"artifacts": str(built.artifacts), "version": built.version}
    logged = load_dataset(
        "events", tmp_path / "events", options | {"with_bundle_interactions": False}
    )
    rows = logged.interactions
    assert rows.height == report.impressions  # one row per shown item (none shown twice a visit)
    assert rows["click"].sum() == report.clicks and rows["purchase"].sum() == report.purchases
    assert (rows["purchase"] <= rows["add_to_cart"]).all() and (
        rows["add_to_cart"] <= rows["click"]
    ).all()
    assert rows["page"].unique().to_list() == ["home"] and rows["position"].max() == "9"

    config_path = tmp_path / "config.json"
    events = {
        "dataset": "events", "data_dir": str(tmp_path / "events"), "dataset_options": options,
        "ranking": CONFIG["ranking"] | {"retrieval_weight": None},  # tuned, not fixed
    }  # fmt: skip
    config_path.write_text(json.dumps(CONFIG | events))  # JSON is YAML
    ctx = pipeline.Context(
        config=load_config(config_path), artifacts=tmp_path / "artifacts", redis_url=scratch_url
    )
    lines = []
    for step in ("etl", "train-retrieval", "train-ranking", "index", "export"):
        lines += list(pipeline.run_step(step, ctx))
    assert ctx.bundle is not None
    # logged on a bundle of the synthetic world: the retrain knows that world too, and
    # tunes the retrieval weight by what lists are truly worth
    origin = ctx.bundle.manifest()["etl"]["origin"]
    assert origin["synthetic"]["n_users"] == CONFIG["dataset_options"]["n_users"]
    assert any("valid top-10 expected clicks" in line for line in lines), lines
    retrained = pl.read_parquet(ctx.bundle.path(Files.INTERACTIONS))
    assert retrained.height == seen.height + report.impressions  # what it knew, and the log
