"""Offline evaluation on the held-out test split, against the full catalog.

- retrieval: each test user's top K over every item (training and validation items
  excluded), against a popularity baseline on the same split;
- every model sees, as a user's history, the positives before the test split
  (training and validation): what a live system would know at the time;
- ranked: the retrieval candidates re-scored by each ranker (its final score, which may
  blend in the retrieval logit), next to retrieval alone and the ranker alone;
- ranking: AUC and logloss per task on test impressions, with the oracle AUC where
  the data knows the true probabilities;
- diagnostics: embedding norms; how often an item's (a user's) nearest neighbours share
  its category (each categorical user feature), against chance; Pearson r and p between
  the items' model scores and each metadata feature; how often a recommended item shares
  a category with the user's history, against a random item; sample recommendations
  beside each user's history.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import polars as pl
import torch
from pydantic import Field
from scipy import stats

from offline import metrics as M
from offline.baselines import baseline_lists
from offline.training.history import CausalHistory
from offline.training.impressions import effective_tasks
from offline.training.ranking import RankingData, predict
from offline.training.retrieval import (
    embed_items,
    embed_users,
    new_items,
    positives,
    seen_pairs,
    shelf_recall,
    top_k,
)
from shared.config import StrictConfig
from shared.feature_map import PAD, FeatureMap
from shared.features import ContextBatch, EntityTable, FeatureTables
from shared.models.rankers import Ranker, final_score
from shared.models.towers import TwoTower
from shared.recall import SeenItems, merge
from shared.schema import DatasetSpec, FeatureKind, TaskKind

__all__ = ["EvaluateConfig", "HeldOut", "evaluate", "held_out", "retrieve", "tune_retrieval_weight"]

log = logging.getLogger(__name__)


class EvaluateConfig(StrictConfig):
    ks: tuple[int, ...] = (10, 20, 50)
    max_users: int = Field(
        20_000, ge=1,
        description="held-out users the metrics read (the test split, and the validation "
        "split that tunes the rankers' retrieval weight): all of them up to this many, an "
        "even sample beyond",
    )  # fmt: skip
    candidates: int = Field(
        100,
        ge=1,
        description="retrieval candidates the rankers re-score (as the gateway's "
        "RECSYS_RANK_CANDIDATES: the retrieval weight is tuned on what serving re-ranks)",
    )
    neighbours: int = Field(10, ge=1)
    samples: int = Field(3, ge=0)
    diagnostic_items: int = Field(
        5000, ge=2,
        description="items the embedding diagnostics read (norms, nearest-neighbour category "
        "agreement among them, score correlations, the random baseline of category hits): "
        "all of a smaller catalogue, an even sample of a larger one",
    )  # fmt: skip
    diagnostic_users: int = Field(
        2000, ge=2,
        description="test users the diagnostics read (embedding ↔ metadata alignment, the "
        "mean user of the score correlations, category hits): an even sample",
    )  # fmt: skip
    correlations: int = Field(
        10, ge=0, description="metadata features listed by |Pearson r| with the model's scores"
    )
    sampled_negatives: int = Field(
        0, ge=0,
        description="also the sampled protocol of many papers (labelled `sampled` in the "
        "metrics): each test user's first held-out item ranked among this many items they "
        "never interacted with; 0: off (the full-catalogue metrics are the honest ones)",
    )  # fmt: skip


@dataclass
class HeldOut:
    """One held-out split, seen as a live system would see it at the split's start."""

    users: np.ndarray  # (U,) user rows with a positive in the split
    relevant: M.RelevantSets  # their positives in the split
    exclude: tuple[np.ndarray, np.ndarray]  # (user position, item row) seen before the split
    earlier: pl.DataFrame  # every interaction before the split
    causal: CausalHistory  # positives before the split, for any (user, time)
    history: np.ndarray  # (U, H) each user's latest items at their first held-out one
    context: ContextBatch  # (U,) context of that first held-out interaction, position at default
    first: pl.DataFrame  # (U rows) that interaction's raw hour, dow and context columns


def held_out(
    tables: FeatureTables,
    interactions: pl.DataFrame,
    spec: DatasetSpec,
    split: str,
    max_users: int | None = None,
) -> HeldOut:
    """``split`` (valid or test) with everything before it: train, then train + valid;
    its users all, or an even sample of ``max_users``."""
    before = ("train",) if split == "valid" else ("train", "valid")
    rows = positives(interactions, spec, split, max_users=max_users)
    users = np.unique(rows["user_idx"].to_numpy())
    where = np.zeros(len(tables.users), dtype=np.int64)
    where[users] = np.arange(len(users))
    relevant = M.relevant_sets(
        where[rows["user_idx"].to_numpy()], rows["item_idx"].to_numpy(), len(users)
    )
    earlier = interactions.filter(pl.col("split").is_in(before))
    chosen = pl.concat([positives(interactions, spec, s) for s in before])
    causal = CausalHistory(
        chosen["user_idx"].to_numpy(),
        chosen["ts"].to_numpy(),
        tables.items.id_slot[chosen["item_idx"].to_numpy()],
        tables.history.shape[1],
    )
    first = (
        rows.join(
            interactions.select(
                "user_idx",
                "item_idx",
                "ts",
                "hour",
                "dow",
                *tables.context.columns,
                *(f.name for f in spec.features_of("context")),
            ),  # fmt: skip
            on=["user_idx", "item_idx", "ts"],
            how="left",
        )
        .sort("ts")
        .group_by("user_idx", maintain_order=True)
        .first()
        .sort("user_idx")
    )
    return HeldOut(
        users=users,
        relevant=relevant,
        exclude=seen_pairs(earlier.select("user_idx", "item_idx"), users),
        earlier=earlier,
        causal=causal,
        history=causal(users, first["ts"].to_numpy()),
        context=tables.at_default_position(tables.context_batch(first)),
        first=first,
    )


def retrieve(
    two_tower: TwoTower, tables: FeatureTables, split: HeldOut, n: int
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(U, n) candidates of each user over the whole catalogue, their (U, n) logits
    ``u'·v'/τ`` (popularity prior included), and every item's serving vector (I, O + 1)."""
    items = embed_items(two_tower, tables)
    users = embed_users(two_tower, tables, split.users, split.history)
    candidates = top_k(users, items, n, split.exclude)
    vectors = items[torch.from_numpy(candidates)]  # (U, n, D)
    logits = (users[:, None, :] * vectors).sum(-1) / two_tower.config.temperature
    return candidates, logits, items


def tune_retrieval_weight(
    ranker: Ranker,
    tables: FeatureTables,
    split: HeldOut,
    candidates: np.ndarray,
    logits: torch.Tensor,
    score_weights: dict[str, float],
    grid: tuple[float, ...],
    value: ListValue | None = None,
) -> tuple[float, dict[float, float]]:
    """The ``retrieval_weight`` of ``grid`` whose re-ranked order is best on ``split``
    (the validation split, with its :func:`retrieve` candidates and logits), and the
    criterion of each (ties go to the smaller weight): NDCG@10 of the held-out positives,
    or, where ``value`` knows the truth (synthetic data), the top 10's expected clicks —
    held-out positives there mostly say what the logging policy happened to show."""
    if len(split.users) == 0 or not grid:
        return 0.0, {}
    scores = _ranker_scores(ranker, tables, split, candidates, score_weights)

    def criterion(order: np.ndarray) -> float:
        if value is None:
            return M.ranking_report(order, split.relevant, (10,))["ndcg@10"]
        users, ids = tables.users.ids[split.users], tables.items.ids
        return float(value.lists(users, ids[order[:, :10]], split.first)["clicks"].mean())

    got = {w: criterion(_order(candidates, scores, logits, w)) for w in sorted(grid)}
    return max(got, key=lambda w: (got[w], -w)), got


def evaluate(
    tables: FeatureTables,
    interactions: pl.DataFrame,
    spec: DatasetSpec,
    two_tower: TwoTower,
    rankers: dict[str, Ranker],
    score_weights: dict[str, float],
    retrieval_weights: dict[str, float],
    test_impressions: RankingData,
    config: EvaluateConfig,
    value: ListValue | None = None,
    item_names: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Returns (metrics, diagnostics, samples).

    ``retrieval_weights`` (ranker kind -> weight, 0 when absent) blend the retrieval
    logit into each ranker's final score, as served (see :func:`final_score`). ``value``
    (synthetic data: the generator's true probabilities) prices each user's top 10 for
    ``list_value``: ranked, retrieval alone, the ranker alone, and the oracle's best 10
    from the same candidates. ``item_names`` (I,), e.g. titles, name the items of the
    sample lists in place of their ids.
    """
    test = held_out(tables, interactions, spec, "test", config.max_users)
    users, relevant, exclude = test.users, test.relevant, test.exclude
    k_max = max(config.ks)
    n_items = len(tables.items)
    candidates, logits, item_emb = retrieve(two_tower, tables, test, max(config.candidates, k_max))
    # the unit part of the serving vectors (without the prior's coordinate): ILD, diagnostics
    item_vectors = item_emb[:, : two_tower.config.out_dim].numpy()
    out: dict[str, Any] = {"dataset": spec.name, "test_users": int(len(users))}
    out["retrieval"] = _ranking_block(
        candidates[:, :k_max], relevant, config.ks, n_items, item_vectors
    )
    counts = M.popularity_scores(test.earlier["item_idx"].to_numpy(), n_items)
    pop = top_k(
        torch.ones(len(users), 1), torch.from_numpy(counts).float()[:, None], k_max, exclude
    )
    out["popularity"] = _ranking_block(pop, relevant, config.ks, n_items, item_vectors)
    out["recall_lists"] = _recall_lists(candidates, counts, test)
    if cold := _cold_items(two_tower, tables, test, interactions, item_emb, config.ks):
        out["cold_items"] = cold
    out["baselines"] = _baselines(test, n_items, config.ks)

    # the rankers re-score the retrieval candidates, in each user's first test context
    out["ranked"], out["ranker_only"], out["ranking"] = {}, {}, {}
    tasks = effective_tasks(spec)
    orders: dict[str, np.ndarray] = {"retrieval": candidates}
    for kind, ranker in rankers.items():
        scores = _ranker_scores(ranker, tables, test, candidates, score_weights)
        weight = retrieval_weights.get(kind, 0.0)
        orders[f"ranked {kind}"] = _order(candidates, scores, logits, weight)
        orders[f"ranker alone {kind}"] = _order(candidates, scores, logits, 0.0)
        out["ranked"][kind] = _ranking_block(
            orders[f"ranked {kind}"][:, :k_max],
            relevant,
            config.ks,
            n_items,
            item_vectors,
        ) | {"retrieval_weight": weight}
        out["ranker_only"][kind] = M.ranking_report(
            orders[f"ranker alone {kind}"][:, :k_max], relevant, config.ks
        )
        probs = predict(
            ranker,
            tables,
            test_impressions,
            test.causal(test_impressions.user, test_impressions.ts),
        )
        out["ranking"][kind] = _task_metrics(tasks, test_impressions, probs)
    if spec.oracle_column and test_impressions.oracle is not None:
        first_task = tasks[0].name
        out["oracle"] = {
            f"{first_task}_auc": M.auc(test_impressions.labels[first_task], test_impressions.oracle)
        }
    if value is not None:
        out["list_value"] = _list_value(value, tables, test, orders, candidates)
    if graded := _graded_ndcg(interactions, spec, test, orders):
        out["graded_ndcg@10"] = graded
    if config.sampled_negatives:
        out["sampled"] = _sampled(
            two_tower, rankers, tables, test, interactions, score_weights, retrieval_weights,
            config.sampled_negatives, item_emb,
        )  # fmt: skip
    out["failures"] = below_chance(out["ranking"])
    diagnostics = _diagnostics(two_tower, tables, item_vectors, spec, config)
    diagnostics |= _alignment(two_tower, tables, test, item_emb, config)
    hits = _category_hits(tables, test, candidates[:, :10], config)
    diagnostics |= {"category_hits": hits} if hits else {}
    samples = _samples(tables, interactions, users, candidates, config.samples, item_names)
    return out, diagnostics, samples


def _sampled(
    two_tower: TwoTower,
    rankers: dict[str, Ranker],
    tables: FeatureTables,
    test: HeldOut,
    interactions: pl.DataFrame,
    score_weights: dict[str, float],
    retrieval_weights: dict[str, float],
    n: int,
    items: torch.Tensor,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """The sampled protocol (NCF and many papers after it): each test user's first held-out
    item against ``n`` uniformly drawn items the user never interacted with; HR@10 and
    NDCG@10 of its rank, for retrieval alone and each ranker's served order. Easier than
    the full catalogue, and not comparable with it."""
    rng = np.random.default_rng(seed)
    first = test.first["item_idx"].to_numpy()  # (U,) rows of test.users, in order
    seen = (
        interactions.select(
            key=pl.col("user_idx").cast(pl.Int64) * len(tables.items) + pl.col("item_idx")
        )["key"]
        .unique()
        .sort()
        .to_numpy()
    )
    draws = rng.integers(1, len(tables.items), (len(first), n))
    for _ in range(20):  # redraw what the user interacted with
        keys = test.users[:, None].astype(np.int64) * len(tables.items) + draws
        at = np.minimum(np.searchsorted(seen, keys), len(seen) - 1)
        clash = (seen[at] == keys) | (draws == first[:, None])
        if not clash.any():
            break
        draws[clash] = rng.integers(1, len(tables.items), int(clash.sum()))
    lists = np.concatenate([first[:, None], draws], axis=1)  # (U, 1 + n), the positive first
    users = embed_users(two_tower, tables, test.users, test.history)
    logits = (users[:, None, :] * items[torch.from_numpy(lists)]).sum(-1)
    logits = logits / two_tower.config.temperature

    def report(order: np.ndarray) -> dict[str, float]:
        rank = np.argmax(order == first[:, None], axis=1)  # 0-based place of the positive
        top = rank < 10
        return {
            "hitrate@10": float(top.mean()),
            "ndcg@10": float(np.where(top, 1 / np.log2(rank + 2), 0.0).mean()),
        }

    by_logit = np.argsort(-logits.numpy(), axis=1, kind="stable")
    out: dict[str, Any] = {"negatives": n}
    out["retrieval"] = report(np.take_along_axis(lists, by_logit, axis=1))
    for kind, ranker in rankers.items():
        scores = _ranker_scores(ranker, tables, test, lists, score_weights)
        out[f"ranked {kind}"] = report(
            _order(lists, scores, logits, retrieval_weights.get(kind, 0.0))
        )
    return out


def _graded_ndcg(
    interactions: pl.DataFrame, spec: DatasetSpec, test: HeldOut, orders: dict[str, np.ndarray]
) -> dict[str, float]:
    """NDCG@10 of each list order with the first regression task (a rating) as the grade
    of each test interaction (gain 2^rating − 1); empty without such a task."""
    grade = next((t.name for t in spec.tasks if t.kind == TaskKind.REGRESSION), None)
    if grade is None or not len(test.users):
        return {}
    rows = interactions.filter((pl.col("split") == "test") & pl.col(grade).is_not_null())
    user_rows = rows["user_idx"].to_numpy()
    at = np.minimum(np.searchsorted(test.users, user_rows), len(test.users) - 1)
    known = test.users[at] == user_rows
    items, grades = rows["item_idx"].to_numpy()[known], rows[grade].to_numpy()[known]
    return {
        name: M.graded_ndcg_at_k(order, at[known], items, grades, 10)
        for name, order in orders.items()
    }


def _cold_items(
    two_tower: TwoTower,
    tables: FeatureTables,
    test: HeldOut,
    interactions: pl.DataFrame,
    items: torch.Tensor,
    ks: tuple[int, ...],
) -> dict[str, float]:
    """Retrieval among the items first met in the test period (a cold-item split,
    ``etl.cold_items``), as a new-items shelf would rank them: each test user's positives
    on those items against all of them. Their ids are out-of-vocabulary and their counts
    zero, so only their features (categories, text…) can tell them apart: recall@k is
    the share of those positives in the user's top k of them. Empty when there are none."""
    shelf = new_items(interactions, "test")
    rel = test.relevant
    users, positives = np.repeat(np.arange(rel.n_users), np.diff(rel.indptr)), rel.indices
    hit = np.isin(positives, shelf)
    if not hit.any():
        return {}
    users, positives = users[hit], positives[hit]
    scored = np.unique(users)
    vectors = embed_users(two_tower, tables, test.users[scored], test.history[scored])
    shelf_emb = items[torch.from_numpy(shelf)]
    recall = shelf_recall(vectors, shelf_emb, shelf, np.searchsorted(scored, users), positives, ks)
    out = {"items": int(len(shelf)), "positives": int(hit.sum())}
    for k in ks:
        out[f"recall@{k}"] = recall[k]
        out[f"random@{k}"] = min(1.0, k / len(shelf))
    return out


class ListValue(Protocol):
    """The true worth of lists (:class:`offline.datasets.synthetic.TrueValue`)."""

    def lists(
        self, users: np.ndarray, items: np.ndarray, context: pl.DataFrame
    ) -> dict[str, np.ndarray]: ...

    def best(
        self, users: np.ndarray, items: np.ndarray, context: pl.DataFrame, k: int
    ) -> dict[str, np.ndarray]: ...


def _list_value(
    value: ListValue,
    tables: FeatureTables,
    test: HeldOut,
    orders: dict[str, np.ndarray],
    candidates: np.ndarray,
    k: int = 10,
) -> dict[str, dict[str, float]]:
    """Mean expected clicks and purchases of each user's top ``k`` in their first test
    context, per list order, and each as a share of the oracle's best ``k`` of the same
    candidates."""
    users, ids = tables.users.ids[test.users], tables.items.ids
    best = value.best(users, ids[candidates], test.first, k)
    oracle = {m: float(value.lists(users, lst, test.first)[m].mean()) for m, lst in best.items()}
    out = {"oracle": oracle}
    for name, order in orders.items():
        got = {
            m: float(v.mean()) for m, v in value.lists(users, ids[order[:, :k]], test.first).items()
        }
        out[name] = got | {f"{m}_of_oracle": got[m] / max(oracle[m], 1e-12) for m in oracle}
    return out


def _baselines(test: HeldOut, n_items: int, ks: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """EASE, item-kNN, recent popularity (:mod:`offline.baselines`) on the same users,
    from the same earlier interactions, their seen items excluded."""
    earlier = test.earlier
    rows = earlier["user_idx"].to_numpy()
    shape = (int(max(rows.max(initial=0), test.users.max(initial=0))) + 1, n_items)
    lists = baseline_lists(
        rows, earlier["item_idx"].to_numpy(), earlier["ts"].to_numpy(), shape, test.users,
        max(ks), never=(0,),  # row 0 is the unknown item
    )  # fmt: skip
    lists.pop("popularity")  # already in the report, as out["popularity"]
    return {name: M.ranking_report(recs, test.relevant, ks) for name, recs in lists.items()}


def _recall_lists(
    candidates: np.ndarray, counts: np.ndarray, test: HeldOut, k: int = 100
) -> dict[str, dict[str, float]]:
    """Recall@50/100 of the published list's compositions (:func:`shared.recall.merge`):
    the two-tower's list alone, hot items padding it, and one hot item after every 4."""
    hot = np.argsort(-counts[1:], kind="stable")[:200] + 1  # the global hot list
    n_users = len(test.users)
    seen = SeenItems.build(test.exclude[0], test.exclude[1], n_users, len(counts))
    pool = np.concatenate([candidates, np.broadcast_to(hot, (n_users, len(hot)))], axis=1)
    banned = seen.contains(np.arange(n_users), pool)
    out = {}
    for every in (0, 4):
        lists = merge(candidates, hot, k, every, banned)
        lists = np.where(lists > 0, lists, -1)
        out[f"hot_every={every}"] = {
            f"recall@{n}": M.recall_at_k(lists, test.relevant, n) for n in (50, k)
        }
    return out


def below_chance(ranking: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """One sentence per ranker task whose test AUC is below 0.5: a failure, not a number."""
    return [
        f"{kind}: {task} AUC {m['auc']:.3f} is below chance (0.5): the ranker orders "
        f"{task} worse than random on held-out data"
        for kind, tasks in ranking.items()
        for task, m in tasks.items()
        if isinstance(m.get("auc"), float) and m["auc"] < 0.5
    ]


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


def _ranker_scores(
    ranker: Ranker,
    tables: FeatureTables,
    split: HeldOut,
    candidates: np.ndarray,
    weights: dict[str, float],
    batch_users: int = 256,
) -> torch.Tensor:
    """(U, C) ranking scores ``Σ_t w_t p_t`` of each user's candidates (batched passes)."""
    n, c = candidates.shape
    out = torch.empty(n, c)
    with torch.no_grad():
        for lo in range(0, n, batch_users):
            s = slice(lo, lo + batch_users)
            inputs = tables.ranker_inputs(
                np.repeat(split.users[s], c),
                candidates[s].reshape(-1),
                split.context.take(s).repeat(c),
                np.repeat(split.history[s], c, axis=0),
            )
            out[s] = ranker.score(inputs, weights).view(-1, c)
    return out


def _order(
    candidates: np.ndarray, scores: torch.Tensor, logits: torch.Tensor, weight: float
) -> np.ndarray:
    """Each user's candidates by their final score, best first."""
    final = final_score(scores, logits, weight)
    order = torch.argsort(final, dim=1, descending=True, stable=True).numpy()
    return np.take_along_axis(candidates, order, axis=1)


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
    # an even sample: no items × items matrix
    rows = M.even_sample(np.arange(1, len(tables.items)), config.diagnostic_items)
    with torch.no_grad():
        fused = model.item_tower.fused(tables.item_inputs(rows))
    diag: dict[str, Any] = {"item_norms": fused.norm(dim=1).tolist(), "items_read": len(rows)}
    cats = spec.features_of("item", FeatureKind.CATEGORICAL)
    if cats and len(rows) > config.neighbours + 1:
        label = tables.items.cat[rows, 0]  # the first categorical item feature (category, decade…)
        agreement, chance = _agreement(vectors[rows], label, config.neighbours)
        diag["neighbour_feature"] = cats[0].name
        diag["neighbour_category_agreement"], diag["neighbour_baseline"] = agreement, chance
    return diag


def _agreement(vectors: np.ndarray, label: np.ndarray, k: int) -> tuple[float, float]:
    """How often a row's ``k`` nearest neighbours (by dot product) share its label, and the
    same for random pairs (Σ share²)."""
    v = torch.from_numpy(np.ascontiguousarray(vectors))
    sims = v @ v.T
    sims.fill_diagonal_(-torch.inf)
    nn_idx = torch.topk(sims, k, dim=1).indices.numpy()
    share = np.unique(label, return_counts=True)[1] / len(label)
    return float((label[nn_idx] == label[:, None]).mean()), float((share**2).sum())


def _alignment(
    model: TwoTower,
    tables: FeatureTables,
    test: HeldOut,
    item_emb: torch.Tensor,
    config: EvaluateConfig,
) -> dict[str, Any]:
    """User embeddings against user metadata (nearest-neighbour agreement per categorical
    feature, against chance), and the items' mean score over the test users against item
    metadata (Pearson r and p, the strongest ``config.correlations`` features)."""
    pos = M.even_sample(np.arange(len(test.users)), config.diagnostic_users)
    users = embed_users(model, tables, test.users[pos], test.history[pos])
    out: dict[str, Any] = {"users_read": len(pos), "user_alignment": {}}
    unit = users[:, : model.config.out_dim].numpy()
    k = min(config.neighbours, len(pos) - 1)
    for f, name in enumerate(tables.users.cat_names):
        label = tables.users.cat[test.users[pos], f]
        if k >= 1 and len(np.unique(label)) > 1:
            agreement, chance = _agreement(unit, label, k)
            out["user_alignment"][name] = {"agreement": agreement, "baseline": chance}
    rows = M.even_sample(np.arange(1, len(tables.items)), config.diagnostic_items)
    score = (item_emb[rows] @ users.mean(0)).numpy() / model.config.temperature
    found = []
    for name, column in _metadata(tables.items, rows, tables.feature_map):
        if np.ptp(column) > 0:
            r, p = stats.pearsonr(column, score)
            found.append({"feature": name, "r": float(r), "p": float(p)})
    found.sort(key=lambda c: -abs(c["r"]))
    out["score_correlation"] = found[: config.correlations]
    return out


def _metadata(
    table: EntityTable, rows: np.ndarray, fmap: FeatureMap, min_rows: int = 5
) -> Iterator[tuple[str, np.ndarray]]:
    """(name, column) of each row's metadata: an indicator per categorical or multi-hot value
    that at least ``min_rows`` rows hold (``genres=Drama``), and each numeric feature."""
    fields = [(n, table.cat[rows, f][:, None]) for f, n in enumerate(table.cat_names)]
    fields += [(n, table.multi[rows, m]) for m, n in enumerate(table.multi_names)]
    for name, slots in fields:
        values, counts = np.unique(slots[slots > PAD], return_counts=True)
        for slot in values[counts >= min_rows]:
            yield f"{name}={fmap.value(name, slot)}", (slots == slot).any(1).astype(np.float64)
    starts = np.cumsum([0, *table.dense_widths])
    for name, start, width in zip(table.dense_names, starts, table.dense_widths, strict=False):
        if width == 1:
            yield name, table.dense[rows, start].astype(np.float64)


def _category_hits(
    tables: FeatureTables, test: HeldOut, recommended: np.ndarray, config: EvaluateConfig
) -> dict[str, dict[str, float]]:
    """For each categorical and multi-hot item feature: the share of the recommended items
    that share a value with the user's earlier items, against that of a random item (an
    even sample of users and of at most 500 items: a (users, items, values) array)."""
    items = tables.items
    random_rows = M.even_sample(np.arange(1, len(items)), min(config.diagnostic_items, 500))
    sample = M.even_sample(np.arange(len(test.users)), config.diagnostic_users)
    fields = [(n, items.cat[:, f][:, None]) for f, n in enumerate(items.cat_names)]
    fields += [(n, items.multi[:, m]) for m, n in enumerate(items.multi_names)]
    return {
        name: {
            "recommended": _hit_share(slots, test.exclude, sample[:, None], recommended[sample]),
            "random": _hit_share(slots, test.exclude, sample[:, None], random_rows[None, :]),
        }
        for name, slots in fields
    }


def _hit_share(
    slots: np.ndarray, earlier: tuple[np.ndarray, np.ndarray], users: np.ndarray, rows: np.ndarray
) -> float:
    """The share of items ``rows`` (users × n) holding a value of ``slots`` (I, L: one value,
    or a padded list of them) that the user's ``earlier`` (user, item) pairs held."""
    width = int(slots.max()) + 1

    def keys(user: np.ndarray, item: np.ndarray) -> np.ndarray:  # (…, L): user × value
        held = slots[item]
        return np.where(held > PAD, user[..., None] * width + held, -1)

    met = np.unique(keys(*earlier))
    return float(np.isin(keys(users, rows), met[met >= 0]).any(-1).mean())


def _samples(
    tables: FeatureTables,
    interactions: pl.DataFrame,
    users: np.ndarray,
    candidates: np.ndarray,
    n: int,
    names: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    out = []
    ids = tables.items.ids if names is None else names
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
