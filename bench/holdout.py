"""Recommendation quality as users meet it: through the API, on data the stack never saw.

    python bench/holdout.py --dataset movielens-100k --data-dir ../shared/data/ml-100k
    python bench/holdout.py --dataset movielens-latest --data-dir ../shared/data/ml-latest-small
                            [--config F.yaml] [--test-frac 0.1] [--min-interactions 5]

1. Splits the source's interactions: for every user with at least
   ``--min-interactions``, the latest ``--test-frac`` by time (at least one; ties at
   the boundary as the ETL breaks them) are held out; everything else is the train part.
2. Runs the worker on the train part alone (``run``: every step, the given config or
   the defaults) into a temporary folder and a Redis server of its own, and starts the
   gateway on it (``python -m services.gateway``).
3. Asks ``/recommend/{uid}?top_k=50`` and ``/recall/{uid}?top_k=50`` for every test user.
4. Scores the same users on the same split with strong simple baselines
   (:mod:`offline.baselines`: popularity, recent popularity, EASE, item-kNN), each
   excluding the user's train items as the gateway does.

It prints NDCG@10 and Recall@10/20/50 of each, every interaction a positive and the
whole catalogue a candidate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import urllib.parse
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import polars as pl
from load import start_server  # bench/, beside this script

from offline import pipeline
from offline.baselines import baseline_lists
from offline.config import load_config
from offline.datasets import load_dataset
from offline.etl import temporal_split
from offline.metrics import ndcg_at_k, recall_at_k, relevant_sets
from shared.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
K = 50
KS = (10, 20, 50)


# --- the split -----------------------------------------------------------------------------
def split(interactions: pl.DataFrame, test_frac: float, min_interactions: int) -> pl.DataFrame:
    """``interactions`` with ``part``: ``test`` for held-out rows, ``train`` for the rest."""
    counts = interactions.group_by("user_id").len()
    eligible = counts.filter(pl.col("len") >= min_interactions)["user_id"]
    held = temporal_split(
        interactions.filter(pl.col("user_id").is_in(eligible.implode())), 0.0, test_frac
    )
    test = held.filter(pl.col("split") == "test").select("user_id", "item_id", "ts")
    marked = interactions.join(
        test.with_columns(part=pl.lit("test")), on=["user_id", "item_id", "ts"], how="left"
    )
    return marked.with_columns(pl.col("part").fill_null("train"))


# --- the stack, through its API ------------------------------------------------------------
def run_stack(dataset, config_path: Path | None, folder: Path, redis_url: str) -> Path:  # noqa: ANN001
    artifacts = folder / "artifacts"
    ctx = pipeline.Context(
        config=load_config(config_path, dataset=dataset.spec.name),
        artifacts=artifacts,
        redis_url=redis_url,
        dataset=dataset,
    )
    started = time.perf_counter()
    for line in pipeline.run_step("run", ctx):  # as `python -m offline run` does
        print(f"  {line}", flush=True)
    print(f"  (the worker's run: {time.perf_counter() - started:.0f} s)", flush=True)
    return artifacts


def query_api(artifacts: Path, redis_url: str, uids: list[str]) -> dict[str, dict[str, list]]:
    port = free_port()
    env = {
        "RECSYS_REDIS_URL": redis_url,
        "RECSYS_ARTIFACTS_DIR": str(artifacts),
        "RECSYS_API_PORT": str(port),
        "RECSYS_LOG_LEVEL": "WARNING",
    }
    # healthy only once the bundle, and the scoring process's copy of it, are loaded
    gateway = start_server([sys.executable, "-m", "services.gateway"], env, port)
    try:
        return asyncio.run(_ask(f"http://127.0.0.1:{port}", uids))
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)


async def _ask(base: str, uids: list[str]) -> dict[str, dict[str, list]]:
    out: dict[str, dict[str, list]] = {"recommend": {}, "recall": {}}
    limit = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def one(route: str, uid: str) -> None:
            async with limit:
                r = await client.get(
                    f"/{route}/{urllib.parse.quote(uid, safe='')}", params={"top_k": K}
                )
                r.raise_for_status()
                items = r.json()["items"]
                out[route][uid] = [i["id"] if isinstance(i, dict) else i for i in items]

        await asyncio.gather(*(one(route, u) for route in out for u in uids))
    return out


# --- baselines -------------------------------------------------------------------------------
def baselines(train: pl.DataFrame, users: list[str], items: list[str]) -> dict[str, np.ndarray]:
    """Top-K item indices per test user for each baseline (train items excluded)."""
    item_index = {i: j for j, i in enumerate(items)}
    everyone = {u: j for j, u in enumerate(train["user_id"].unique().sort().to_list())}
    rows = train["user_id"].replace_strict(everyone, return_dtype=pl.Int64).to_numpy()
    cols = train["item_id"].replace_strict(item_index, return_dtype=pl.Int64).to_numpy()
    scored = np.array([everyone[u] for u in users])
    times = train["ts"].to_numpy()
    return baseline_lists(rows, cols, times, (len(everyone), len(items)), scored, K)


def report(name: str, recs: np.ndarray, relevant) -> str:  # noqa: ANN001
    values = [ndcg_at_k(recs, relevant, 10), *(recall_at_k(recs, relevant, k) for k in KS)]
    return f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/ml-100k")
    parser.add_argument("--config", type=Path, help="the worker's config (default: the defaults)")
    parser.add_argument("--test-frac", type=float, default=0.1)
    parser.add_argument("--min-interactions", type=int, default=5)
    args = parser.parse_args()

    started = time.perf_counter()
    dataset = load_dataset(args.dataset, args.data_dir, {})
    marked = split(dataset.interactions, args.test_frac, args.min_interactions)
    train = marked.filter(pl.col("part") == "train").drop("part")
    test = marked.filter(pl.col("part") == "test")
    users = sorted(test["user_id"].unique().to_list())
    items = dataset.items["item_id"].to_list()
    print(
        f"{args.dataset}: {marked.height} interactions, {len(users)} test users, "
        f"{test.height} held out, {train.height} to train on",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="recsys-holdout-") as tmp, RedisServer() as redis:
        artifacts = run_stack(
            replace(dataset, interactions=train), args.config, Path(tmp), redis.url
        )
        answers = query_api(artifacts, redis.url, users)

    item_index = {i: j for j, i in enumerate(items)}
    user_index = {u: j for j, u in enumerate(users)}
    relevant = relevant_sets(
        test["user_id"].replace_strict(user_index, return_dtype=pl.Int64).to_numpy(),
        test["item_id"].replace_strict(item_index, return_dtype=pl.Int64).to_numpy(),
        len(users),
    )

    def as_recs(lists: dict[str, list[str]]) -> np.ndarray:
        recs = np.full((len(users), K), -1, dtype=np.int64)
        for u, ids in lists.items():
            rows = [item_index[i] for i in ids[:K]]
            recs[user_index[u], : len(rows)] = rows
        return recs

    lines = [
        f"{args.dataset}, per-user latest {args.test_frac:.0%} held out "
        f"(users with ≥ {args.min_interactions}), {len(users)} test users, full catalogue "
        f"({len(items)} items), train items excluded",
        "",
        "| method | NDCG@10 | R@10 | R@20 | R@50 |",
        "| --- | --- | --- | --- | --- |",
        report("`/recommend` (API)", as_recs(answers["recommend"]), relevant),
        report("`/recall` (API)", as_recs(answers["recall"]), relevant),
    ]
    lines += [report(name, recs, relevant) for name, recs in baselines(train, users, items).items()]
    print("\n" + "\n".join(lines))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
