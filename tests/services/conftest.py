"""Fixtures of the serving tests: one small real bundle per session, published to Redis.

The bundle is built once, in-process, by the worker's own steps (etl, train-retrieval,
train-ranking, index) on tiny synthetic data; tests publish it to databases of the
session's real redis-server (``redis_server`` in ``tests/conftest.py``) that no other
test flushes: :data:`STORE_DB` stays as published (read-only tests), :data:`SCRATCH_DB`
is wiped and republished for every test that changes Redis.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import redis
import torch

from offline import pipeline
from offline.config import PipelineConfig, load_config
from offline.etl import encode_context
from offline.training.ranking import RankingData, predict
from shared.bundle import Bundle, Files
from shared.feature_map import FeatureMap
from shared.features import ContextBatch, FeatureTables
from shared.models.checkpoint import load_model
from shared.models.rankers import final_score
from shared.redis_server import RedisServer
from shared.schema import DatasetSpec, FeatureKind

STORE_DB = 5
SCRATCH_DB = 6
# hot_n < n_items so the memory hot list is longer than the published one; recall_k
# < n_items so that top_k=200 asks for more than any list holds
CONFIG = {
    "dataset_options": {"n_users": 120, "n_items": 80, "n_impressions": 4000},
    "retrieval": {"trainer": {"epochs": 1}, "popularity_prior": 0.5},  # the prior's logit
    # both rankers (the default trains DCN-v2 alone); the blended score
    "ranking": {"models": ["dcn", "deepfm"], "trainer": {"epochs": 1}, "retrieval_weight": 0.5},
    "index": {"recall_k": 40, "hot_n": 30},
    # pretrained vectors through every model and the serving path: ALS factors of users
    # and items, the items' text (category, brand, tags) embedded; the derived is_weekend
    # clock feature, from the request's time as from the logs' (a Wednesday is not one)
    "etl": {
        "als": {"factors": 8, "iterations": 3},
        "text": {"columns": ["category", "brand", "tags"]},
        "derived": ["is_weekend"],
    },
}
# Wednesday 3 January 2024, 14:30 UTC: hour 14, day of week 2 (Monday = 0, as in the ETL)
PINNED = datetime(2024, 1, 3, 14, 30, tzinfo=UTC)


def db_url(server: RedisServer, db: int) -> str:
    return server.url.rsplit("/", 1)[0] + f"/{db}"


@dataclass
class BuiltBundle:
    """The session's bundle folder and how to publish or derive versions from it."""

    artifacts: Path
    version: str
    config: PipelineConfig

    @property
    def root(self) -> Path:
        return self.artifacts / self.version

    def publish(self, redis_url: str, version: str | None = None, cluster: bool = False) -> None:
        ctx = pipeline.Context(
            config=self.config,
            artifacts=self.artifacts,
            redis_url=redis_url,
            redis_cluster=cluster,
            version=version or self.version,
        )
        for _ in pipeline.run_step("publish", ctx):
            pass

    def derive(self, version: str, change: Callable[[Path], tuple[str, ...]] | None = None) -> str:
        """Copy the bundle as ``version``; ``change(root)`` edits files and names them."""
        root = self.artifacts / version
        if root.exists():
            shutil.rmtree(root)
        shutil.copytree(self.root, root)
        bundle = Bundle(root)
        bundle.update_manifest(version=version)
        changed = change(root) if change is not None else ()
        if changed:
            bundle.add(*changed)
        return version

    # --- what the bundle's own files say (the offline view) -----------------------------
    def users(self) -> pl.DataFrame:
        return pl.read_parquet(self.root / Files.USERS)

    def items(self) -> pl.DataFrame:
        return pl.read_parquet(self.root / Files.ITEMS)

    def seen(self, uid: str) -> set[str]:
        inter = pl.read_parquet(self.root / Files.INTERACTIONS, columns=["user_id", "item_id"])
        return set(inter.filter(pl.col("user_id") == uid)["item_id"].to_list())

    def serving(self) -> dict:
        return json.loads((self.root / Files.MANIFEST).read_text())["serving"]

    def score_weights(self) -> dict[str, float]:
        return self.serving()["score_weights"]


class OfflineScorer:
    """The final score and task probabilities rebuilt from the bundle's files alone,
    along the offline path: ``FeatureTables`` → ``Ranker.score`` / ``predict``, the
    the two-tower's unit vectors and popularity prior, ``final_score``."""

    def __init__(self, built: BuiltBundle, kind: str = "dcn") -> None:
        root = built.root
        self.tables = FeatureTables.from_frames(
            pl.read_parquet(root / Files.USERS),
            pl.read_parquet(root / Files.ITEMS),
            DatasetSpec.from_dict(json.loads((root / Files.SPEC).read_text())),
            FeatureMap.load(root / Files.FEATURE_MAP),
        )
        self.ranker = load_model(root / Files.RANKER.format(kind=kind))
        self.two_tower = load_model(root / Files.TWO_TOWER)
        self.weights = built.score_weights()
        self.retrieval_weight = built.serving()["retrieval_weights"][kind]
        self.spec = DatasetSpec.from_dict(json.loads((root / Files.SPEC).read_text()))
        self.items = pl.read_parquet(root / Files.ITEMS)

    def context(self, hour: int, dow: int, given: dict | None = None, n: int = 1) -> ContextBatch:
        """``n`` impressions' contexts encoded the way ETL encodes the logged ones (raw
        columns → ``ctx_*``), a missing feature at its default."""
        row = {"hour": [hour], "dow": [dow]}
        for f in self.spec.features_of("context"):
            value = (given or {}).get(f.name, f.default)
            dtype = pl.Float64 if f.kind == FeatureKind.NUMERIC else pl.String
            row[f.name] = pl.Series([None if value is None else value], dtype=dtype)
        frame = encode_context(pl.DataFrame(row), self.items, self.spec, self.tables.feature_map)
        return self.tables.context_batch(frame).repeat(n)

    def score(
        self,
        users: np.ndarray,
        items: np.ndarray,
        hour: int,
        dow: int,
        history: np.ndarray | None = None,
        context: dict | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``history`` (B, H) item id slots: in place of the users' served histories;
        ``context``: raw context values (the rest at their defaults)."""
        n = len(users)
        ctx = self.context(hour, dow, context, n)
        with torch.no_grad():
            score = self.ranker.score(
                self.tables.ranker_inputs(users, items, ctx, history), self.weights
            )
            # u·v/τ + β·log q_i, from the towers' unit vectors and the item's share
            towers = self.two_tower
            u = towers.user_embed(self.tables.user_inputs(users, history))
            item_inputs = self.tables.item_inputs(items)
            v = towers.item_embed(item_inputs)
            prior = towers.item_tower.log_popularity[item_inputs.id]
            c = towers.config
            logits = (u * v).sum(1) / c.temperature + c.popularity_prior * prior
        probs = predict(
            self.ranker,
            self.tables,
            RankingData(
                user=users,
                item=items,
                ts=np.zeros(n, dtype=np.int64),
                context=ctx,
                labels={},
            ),
            history,
        )
        return final_score(score, logits, self.retrieval_weight).numpy(), probs


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltBundle:
    folder = tmp_path_factory.mktemp("serving")
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(CONFIG))  # JSON is YAML
    config = load_config(config_path)
    ctx = pipeline.Context(config=config, artifacts=folder / "artifacts", redis_url="unused")
    for step in ("etl", "train-retrieval", "train-ranking", "index", "export"):
        for _ in pipeline.run_step(step, ctx):
            pass
    assert ctx.bundle is not None
    return BuiltBundle(folder / "artifacts", ctx.bundle.version, config)


@pytest.fixture(scope="session")
def store_url(redis_server: RedisServer, built: BuiltBundle) -> str:
    """A Redis database holding the published bundle; tests must not change it."""
    url = db_url(redis_server, STORE_DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    built.publish(url)
    return url


@pytest.fixture
def scratch_url(redis_server: RedisServer, built: BuiltBundle) -> Iterator[str]:
    """A Redis database with the bundle freshly published, for tests that change Redis."""
    url = db_url(redis_server, SCRATCH_DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    built.publish(url)
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def own_redis(built: BuiltBundle) -> Iterator[RedisServer]:
    """A redis-server of this test alone (fault tests stop and restart it)."""
    with RedisServer() as server:
        built.publish(server.url)
        yield server


def null_user_features(root: Path, uid: str) -> tuple[str, ...]:
    """Rewrite users.parquet as the ETL encodes a user with null features: OOV slots."""
    fmap = FeatureMap.load(root / Files.FEATURE_MAP)
    users = pl.read_parquet(root / Files.USERS)
    this = pl.col("user_id") == uid
    changes = [
        pl.when(this).then(pl.lit(fmap.oov(c.removeprefix("slot_")))).otherwise(pl.col(c)).alias(c)
        for c in users.columns
        if c.startswith("slot_") and c != "slot_user_id"
    ]
    changes += [
        pl.when(this).then(pl.lit(0.0, dtype=users[c].dtype)).otherwise(pl.col(c)).alias(c)
        for c in users.columns
        if c.startswith("num_")
    ]
    width = len(users["history"][0])
    changes.append(
        pl.when(this)
        .then(pl.lit(np.zeros(width, dtype=np.int64).tolist(), dtype=users["history"].dtype))
        .otherwise(pl.col("history"))
        .alias("history")
    )
    users.with_columns(changes).write_parquet(root / Files.USERS)
    return (Files.USERS,)
