"""Offline evaluation on the held-out test split, against the full catalog.

- retrieval: each test user's top K over every item (training and validation items
  excluded), against a popularity baseline on the same split;
- every model sees, as a user's history, the positives before the test split
  (training and validation): what a live system would know at the time;
- ranked: the retrieval candidates re-scored by each ranker, next to retrieval alone;
- ranking: AUC and logloss per task on test impressions, with the oracle AUC where
  the data knows the true probabilities;
- diagnostics: embedding norms, how often an item's nearest neighbours share its
  category, sample recommendations beside each user's history.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import polars as pl
import torch
from pydantic import Field

from offline import metrics as M
from offline.training.history import CausalHistory
from offline.training.impressions import effective_tasks
from offline.training.ranking import RankingData, predict
from offline.training.retrieval import embed_items, embed_users, positives, seen_pairs, top_k
from shared.config import StrictConfig
from shared.features import FeatureTables
from shared.models.rankers import Ranker
from shared.models.towers import TwoTower
from shared.schema import DatasetSpec, FeatureKind

__all__ = ["EvaluateConfig", "evaluate"]

log = logging.getLogger(__name__)


class EvaluateConfig(StrictConfig):
    ks: tuple[int, ...] = (10, 20, 50)
    candidates: int = Field(200, ge=1, description="retrieval candidates the rankers re-score")
    neighbours: int = Field(10, ge=1)
    samples: int = Field(3, ge=0)


def evaluate(
    tables: FeatureTables,
    interactions: pl.DataFrame,
    spec: DatasetSpec,
    two_tower: TwoTower,
    rankers: dict[str, Ranker],
    score_weights: dict[str, float],
    test_impressions: RankingData,
    config: EvaluateConfig,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Returns (metrics, diagnostics, samples)."""
    test = positives(interactions, spec, "test")
    users = np.unique(test["user_idx"].to_numpy())
    where = np.zeros(len(tables.users), dtype=np.int64)
    where[users] = np.arange(len(users))
    relevant = M.relevant_sets(
        where[test["user_idx"].to_numpy()], test["item_idx"].to_numpy(), len(users)
    )
    before = interactions.filter(pl.col("split") != "test")
    exclude = seen_pairs(before.select("user_idx", "item_idx"), users)
    k_max = max(config.ks)
    n_items = len(tables.items)
    earlier = pl.concat([positives(interactions, spec, s) for s in ("train", "valid")])
    causal = CausalHistory(
        earlier["user_idx"].to_numpy(),
        earlier["ts"].to_numpy(),
        tables.items.id_slot[earlier["item_idx"].to_numpy()],
        tables.history.shape[1],
    )
    first_ts = test.group_by("user_idx").agg(pl.col("ts").min())
    ts = np.zeros(len(tables.users), dtype=np.int64)
    ts[first_ts["user_idx"].to_numpy()] = first_ts["ts"].to_numpy()
    history = causal(users, ts[users])  # (U, H)

    item_emb = embed_items(two_tower, tables)
    candidates = top_k(
        embed_users(two_tower, tables, users, history),
        item_emb,
        max(config.candidates, k_max),
        exclude,
    )
    item_vectors = item_emb.numpy()
    out: dict[str, Any] = {"dataset": spec.name, "test_users": int(len(users))}
    out["retrieval"] = _ranking_block(
        candidates[:, :k_max], relevant, config.ks, n_items, item_vectors
    )

    counts = torch.from_numpy(
        M.popularity_scores(
            before["item_idx"].to_numpy(), n_items
        ).astype(np.float32)
    )
    pop = top_k(torch.ones(len(users), 1), counts[:, None], k_max, exclude)
    out["popularity"] = _ranking_block(pop, relevant, config.ks, n_items, item_vectors)

    # the rankers re-score the retrieval candidates, in each user's first test context
    first = test.join(
        interactions.select("user_idx", "item_idx", "ts", "hour", "dow"),
        on=["user_idx", "item_idx", "ts"],
        how="left",
    )
    ctx = first.sort("ts").group_by("user_idx", maintain_order=True).first()
    ctx_rows = where[ctx["user_idx"].to_numpy()]
    hour = np.zeros(len(users), dtype=np.int64)
    dow = np.zeros(len(users), dtype=np.int64)
    hour[ctx_rows], dow[ctx_rows] = ctx["hour"].to_numpy(), ctx["dow"].to_numpy()
    out["ranked"], out["ranking"] = {}, {}
    tasks = effective_tasks(spec)
    for kind, ranker in rankers.items():
        reranked = _rerank(ranker, tables, users, history, candidates, hour, dow, score_weights)
        out["ranked"][kind] = _ranking_block(
            reranked[:, :k_max], relevant, config.ks, n_items, item_vectors
        )
        probs = predict(
            ranker, tables, test_impressions, causal(test_impressions.user, test_impressions.ts)
        )
        out["ranking"][kind] = _task_metrics(tasks, test_impressions, probs)
    if spec.oracle_column and test_impressions.oracle is not None:
        first_task = tasks[0].name
        out["oracle"] = {
            f"{first_task}_auc": M.auc(test_impressions.labels[first_task], test_impressions.oracle)
        }
    diagnostics = _diagnostics(two_tower, tables, item_vectors, spec, config)
    samples = _samples(tables, interactions, users, candidates, config.samples)
    return out, diagnostics, samples


def _ranking_block(
    recs: np.ndarray,
    relevant: M.RelevantSets,
    ks: tuple[int, ...],
    n_items: int,
    vectors: np.ndarray,
) -> dict[str, float]:
    block = M.ranking_report(recs, relevant, ks)
    block["coverage"] = M.catalog_coverage(recs[:, : min(ks)], n_items - 1)
    block[f"ild@{min(ks)}"] = M.intra_list_diversity(recs[:, : min(ks)], vectors)
    return block


def _rerank(
    ranker: Ranker,
    tables: FeatureTables,
    users: np.ndarray,
    history: np.ndarray,
    candidates: np.ndarray,
    hour: np.ndarray,
    dow: np.ndarray,
    weights: dict[str, float],
    batch_users: int = 256,
) -> np.ndarray:
    """Candidates of each user ordered by the ranker's score (one batched pass per chunk)."""
    n, c = candidates.shape
    out = np.empty_like(candidates)
    with torch.no_grad():
        for lo in range(0, n, batch_users):
            s = slice(lo, lo + batch_users)
            b = len(users[s])
            inputs = tables.ranker_inputs(
                np.repeat(users[s], c),
                candidates[s].reshape(-1),
                np.repeat(hour[s], c),
                np.repeat(dow[s], c),
                np.repeat(history[s], c, axis=0),
            )
            scores = ranker.score(inputs, weights).view(b, c)
            order = torch.argsort(scores, dim=1, descending=True).numpy()
            out[s] = np.take_along_axis(candidates[s], order, axis=1)
    return out


def _task_metrics(
    tasks: tuple, data: RankingData, probs: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    result: dict[str, dict[str, float]] = {}
    for task in tasks:
        y = data.labels[task.name]
        p = probs[task.name]
        if task.kind == "regression":
            ok = ~np.isnan(y)
            result[task.name] = {"rmse": M.rmse(y[ok], p[ok]), "n": int(ok.sum())}
            continue
        y0 = np.nan_to_num(y)  # unknown child labels of sampled negatives: not chosen, so 0
        entry = {
            "auc": M.auc(y0, p),
            "logloss": M.logloss(y0, p),
            "n": len(y0),
            "positive_rate": float(y0.mean()),
        }
        if (
            task.parent is not None
        ):  # how well the child separates among rows where the parent happened
            given = data.labels[task.parent] == 1
            parent_p = np.maximum(probs[task.parent][given], 1e-12)
            entry["auc_given_parent"] = M.auc(np.nan_to_num(y[given]), p[given] / parent_p)
        result[task.name] = entry
    return result


def _diagnostics(
    model: TwoTower,
    tables: FeatureTables,
    vectors: np.ndarray,
    spec: DatasetSpec,
    config: EvaluateConfig,
) -> dict[str, Any]:
    rows = np.arange(1, len(tables.items))
    with torch.no_grad():
        fused = model.item_tower.fused(tables.item_inputs(rows))
    diag: dict[str, Any] = {"item_norms": fused.norm(dim=1).tolist()}
    cats = spec.features_of("item", FeatureKind.CATEGORICAL)
    if cats and len(rows) > config.neighbours + 1:
        label = tables.items.cat[rows, 0]  # the first categorical item feature (category, decade…)
        v = torch.from_numpy(vectors[rows])
        sims = v @ v.T
        sims.fill_diagonal_(-torch.inf)
        nn_idx = torch.topk(sims, config.neighbours, dim=1).indices.numpy()
        diag["neighbour_feature"] = cats[0].name
        diag["neighbour_category_agreement"] = float((label[nn_idx] == label[:, None]).mean())
        share = np.unique(label, return_counts=True)[1] / len(label)
        diag["neighbour_baseline"] = float((share**2).sum())
    return diag


def _samples(
    tables: FeatureTables,
    interactions: pl.DataFrame,
    users: np.ndarray,
    candidates: np.ndarray,
    n: int,
) -> list[dict[str, Any]]:
    out = []
    ids = tables.items.ids
    for pos in np.linspace(0, len(users) - 1, n).astype(int) if n and len(users) else []:
        u = users[pos]
        hist = (
            interactions.filter((pl.col("user_idx") == u) & (pl.col("split") == "train"))
            .sort("ts", descending=True)
            .head(10)
        )
        out.append(
            {
                "user_id": str(tables.users.ids[u]),
                "history": [str(ids[i]) for i in hist["item_idx"].to_list()],
                "recommended": [str(ids[i]) for i in candidates[pos, :10]],
            }
        )
    return out
