"""Offline metrics: top-k selection, ranking quality, catalogue breadth, classification.

Everything is plain numpy, vectorised over users (no Python loop per user or item).

Conventions:

- ``recs``: ``(U, K)`` int item indices, best first. ``-1`` pads a row that has
  fewer than ``K`` items and never counts as a hit. A repeated item counts once
  (at its first position).
- ``relevant``: the held-out relevant items per user as a CSR pair
  :class:`RelevantSets` ``(indptr (U+1,), indices (nnz,))``; user ``u``'s items are
  ``indices[indptr[u]:indptr[u+1]]``. Build it with :func:`relevant_sets`. Row ``u``
  of ``relevant`` belongs to row ``u`` of ``recs``.
- Ranking metrics average over users with at least one relevant item; users
  without any are excluded (``nan`` if no user has one).

Legend: U users, I items, K list length, D embedding size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

__all__ = [
    "SCORE_BLOCK",
    "RelevantSets",
    "auc",
    "catalog_coverage",
    "even_sample",
    "hit_matrix",
    "hit_rate_at_k",
    "intra_list_diversity",
    "logloss",
    "map_at_k",
    "mrr",
    "ndcg_at_k",
    "popularity_scores",
    "precision_at_k",
    "ranking_report",
    "recall_at_k",
    "relevant_sets",
    "rmse",
    "topk_from_scores",
]

log = logging.getLogger(__name__)

SCORE_BLOCK = 1 << 25  # user × item scores held at once by blocked top-k (32M: 128 MB as float32)


class RelevantSets(NamedTuple):
    """Relevant items per user in CSR form; row ``u`` is ``indices[indptr[u]:indptr[u+1]]``.

    Attributes:
        indptr: ``(U+1,)`` int64 row offsets, ``indptr[0] == 0``.
        indices: ``(nnz,)`` int64 item indices, sorted and unique within each row.
    """

    indptr: np.ndarray
    indices: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    @property
    def counts(self) -> np.ndarray:
        """``(U,)`` number of relevant items per user, ``|rel_u|``."""
        return np.diff(self.indptr)


# --- building blocks ---------------------------------------------------------------
def relevant_sets(user_row: np.ndarray, item_idx: np.ndarray, n_users: int) -> RelevantSets:
    """Build :class:`RelevantSets` from ``(user_row, item_idx)`` pairs (duplicates dropped).

    Args:
        user_row: ``(n,)`` int row of ``recs`` each pair belongs to, in ``[0, n_users)``.
        item_idx: ``(n,)`` int item index, ``>= 0``.
        n_users: U, the number of rows (users without pairs get an empty row).

    Returns:
        ``RelevantSets`` with ``indptr (U+1,)`` and sorted, unique ``indices``.
    """
    user_row = np.asarray(user_row, dtype=np.int64).ravel()
    item_idx = np.asarray(item_idx, dtype=np.int64).ravel()
    if user_row.shape != item_idx.shape:
        raise ValueError(f"user_row {user_row.shape} and item_idx {item_idx.shape} differ")
    if user_row.size and (user_row.min() < 0 or user_row.max() >= n_users):
        raise ValueError(f"user_row must lie in [0, {n_users})")
    if item_idx.size and item_idx.min() < 0:
        raise ValueError("item_idx must be >= 0")
    pairs = np.unique(np.stack([user_row, item_idx], axis=1), axis=0)  # sorted by (u, i)
    counts = np.bincount(pairs[:, 0], minlength=n_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return RelevantSets(indptr=indptr, indices=pairs[:, 1].copy())


def even_sample(rows: np.ndarray, n: int) -> np.ndarray:
    """All of ``rows``, or an even sample of ``n`` of them (first and last included)."""
    return rows if len(rows) <= n else rows[np.linspace(0, len(rows) - 1, n).astype(np.int64)]


def topk_from_scores(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """The ``k`` best-scoring items per user, best first (argpartition, then sort k).

    Excluded items get score ``-inf``; a slot whose best remaining score is ``-inf``
    (only excluded items are left) or that lies beyond ``I`` is ``-1``.

    Args:
        scores: ``(U, I)`` float scores, or ``(I,)`` shared by every user.
        k: list length K.
        exclude: ``(U, I)`` bool mask of items never to recommend (e.g. seen in train).

    Returns:
        ``(U, K)`` int64 item indices (``U = 1`` for 1-D scores without ``exclude``).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        scores = np.where(exclude, -np.inf, np.broadcast_to(scores, exclude.shape))
    scores = np.atleast_2d(scores)
    n_users, n_items = scores.shape
    kk = min(k, n_items)
    if kk < n_items:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]  # (U, kk) unordered
    else:
        part = np.broadcast_to(np.arange(n_items), (n_users, n_items))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1).astype(np.int64)  # (U, kk)
    top[np.take_along_axis(part_scores, order, axis=1) == -np.inf] = -1
    if kk < k:
        top = np.pad(top, ((0, 0), (0, k - kk)), constant_values=-1)
    return top


def hit_matrix(recs: np.ndarray, relevant: RelevantSets) -> np.ndarray:
    """``(U, K)`` bool: ``recs[u, j]`` is relevant to ``u`` (padding and repeats are False).

    Membership is one ``searchsorted`` over keys ``u * M + item`` of all relevant pairs.
    """
    recs = np.asarray(recs, dtype=np.int64)
    if recs.ndim != 2:
        raise ValueError(f"recs must be (U, K), got shape {recs.shape}")
    indptr = np.asarray(relevant[0], dtype=np.int64)
    indices = np.asarray(relevant[1], dtype=np.int64)
    n_users, width = recs.shape
    if len(indptr) - 1 != n_users:
        raise ValueError(f"relevant has {len(indptr) - 1} users, recs has {n_users}")
    if indices.size == 0 or width == 0:
        return np.zeros(recs.shape, dtype=bool)
    m = int(max(indices.max(), recs.max())) + 1
    rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(indptr))
    keys = np.sort(rows * m + indices)  # sorted already for RelevantSets; cheap otherwise
    query = np.arange(n_users, dtype=np.int64)[:, None] * m + recs  # (U, K)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    hits = (keys[pos] == query) & (recs >= 0)
    # A repeated item counts at its first position only.
    order = np.argsort(recs, axis=1, kind="stable")
    srt = np.take_along_axis(recs, order, axis=1)
    repeat = np.zeros(recs.shape, dtype=bool)
    repeat[:, 1:] = srt[:, 1:] == srt[:, :-1]
    np.put_along_axis(repeat, order, repeat.copy(), axis=1)
    return hits & ~repeat


def _mean_over_users(per_user: np.ndarray, n_rel: np.ndarray) -> float:
    """Mean of ``per_user`` over users with ``|rel_u| >= 1`` (``nan`` if there are none)."""
    valid = n_rel > 0
    if not valid.any():
        return float("nan")
    return float(per_user[valid].mean())


def _prepare(recs: np.ndarray, relevant: RelevantSets, k: int | None) -> tuple[np.ndarray, ...]:
    """``hits[:, :k]`` and ``|rel_u|``."""
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    hits = hit_matrix(recs, relevant)
    if k is not None:
        hits = hits[:, :k]
    return hits, np.diff(np.asarray(relevant[0], dtype=np.int64))


# Per-user scores from ``hits (U, <=k)`` and ``n_rel (U,)``; the public functions average.
def _recall(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    return hits.sum(1) / np.maximum(n_rel, 1)


def _precision(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    return hits.sum(1) / k


def _hit_rate(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    return hits.any(1).astype(np.float64)


def _ndcg(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    discount = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    dcg = hits @ discount[: hits.shape[1]]
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(n_rel, k)]
    return dcg / np.where(ideal > 0, ideal, 1.0)


def _average_precision(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    prec = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)  # (U, K)
    return (prec * hits).sum(1) / np.maximum(np.minimum(n_rel, k), 1)


def _reciprocal_rank(hits: np.ndarray, n_rel: np.ndarray, k: int | None = None) -> np.ndarray:
    first = hits.argmax(1)  # 0 when there is no hit; masked below
    return np.where(hits.any(1), 1.0 / (first + 1), 0.0)


_AT_K = {
    "recall": _recall,
    "precision": _precision,
    "ndcg": _ndcg,
    "map": _average_precision,
    "hitrate": _hit_rate,
}


# --- ranking metrics ---------------------------------------------------------------
def recall_at_k(recs: np.ndarray, relevant: RelevantSets, k: int) -> float:
    """``mean_u |top_k(u) ∩ rel_u| / |rel_u|``."""
    hits, n_rel = _prepare(recs, relevant, k)
    return _mean_over_users(_recall(hits, n_rel, k), n_rel)


def precision_at_k(recs: np.ndarray, relevant: RelevantSets, k: int) -> float:
    """``mean_u |top_k(u) ∩ rel_u| / k`` (a short list still divides by ``k``)."""
    hits, n_rel = _prepare(recs, relevant, k)
    return _mean_over_users(_precision(hits, n_rel, k), n_rel)


def hit_rate_at_k(recs: np.ndarray, relevant: RelevantSets, k: int) -> float:
    """``mean_u 1[|top_k(u) ∩ rel_u| > 0]``."""
    hits, n_rel = _prepare(recs, relevant, k)
    return _mean_over_users(_hit_rate(hits, n_rel, k), n_rel)


def ndcg_at_k(recs: np.ndarray, relevant: RelevantSets, k: int) -> float:
    """Binary-relevance NDCG: ``DCG = sum_j hit_j / log2(j + 2)`` (``j`` 0-based),
    ``IDCG = sum_{j < min(|rel_u|, k)} 1 / log2(j + 2)``, score ``DCG / IDCG``."""
    hits, n_rel = _prepare(recs, relevant, k)
    return _mean_over_users(_ndcg(hits, n_rel, k), n_rel)


def graded_ndcg_at_k(
    recs: np.ndarray, users: np.ndarray, items: np.ndarray, gains: np.ndarray, k: int
) -> float:
    """NDCG@k with graded relevance (rating data): ``DCG = Σ_j g(u, rec_j) / log2(j + 2)``,
    ``IDCG`` the same over the user's gains sorted best first; ``g = 2^grade − 1``.

    Args:
        recs: ``(U, ≥k)`` item rows, best first (row ``u`` is user position ``u``).
        users, items, gains: ``(P,)`` each held-out (user position, item row, grade);
            a repeated pair keeps its highest grade.

    Returns:
        The mean over users with at least one positive gain.
    """
    n_items = int(max(recs.max(initial=0), items.max(initial=0))) + 1
    g = np.exp2(np.asarray(gains, dtype=np.float64)) - 1.0
    keys = users.astype(np.int64) * n_items + items
    order = np.lexsort((-g, keys))
    keys, g = keys[order], g[order]
    first = np.r_[True, keys[1:] != keys[:-1]]
    keys, g = keys[first], g[first]  # one gain per pair, its highest
    top = recs[:, :k].astype(np.int64)
    query = np.arange(len(recs))[:, None] * n_items + top  # (U, k)
    at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    got = np.where(keys[at] == query, g[at], 0.0)  # (U, k)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = got @ discount
    owners = keys // n_items
    by = np.lexsort((-g, owners))  # each user's gains, best first
    owners, best = owners[by], g[by]
    starts = np.searchsorted(owners, owners)  # where each user's run begins
    rank = np.arange(len(owners)) - starts
    keep = rank < k
    idcg = np.bincount(owners[keep], weights=best[keep] * discount[rank[keep]], minlength=len(recs))
    scored = idcg > 0
    return float((dcg[scored] / idcg[scored]).mean()) if scored.any() else 0.0


def map_at_k(recs: np.ndarray, relevant: RelevantSets, k: int) -> float:
    """Mean AP@k: ``AP = sum_j hit_j * precision@(j+1) / min(|rel_u|, k)``."""
    hits, n_rel = _prepare(recs, relevant, k)
    return _mean_over_users(_average_precision(hits, n_rel, k), n_rel)


def mrr(recs: np.ndarray, relevant: RelevantSets) -> float:
    """``mean_u 1 / rank of the first hit`` over the whole list (0 if there is none)."""
    hits, n_rel = _prepare(recs, relevant, None)
    return _mean_over_users(_reciprocal_rank(hits, n_rel), n_rel)


def ranking_report(
    recs: np.ndarray, relevant: RelevantSets, ks: Iterable[int] = (10, 20, 50)
) -> dict[str, float]:
    """Every ranking metric at every ``k``: ``recall@k``, ``precision@k``, ``ndcg@k``,
    ``map@k``, ``hitrate@k``, plus ``mrr`` over the full list and ``n_users`` evaluated.

    The hit matrix is computed once and sliced per ``k``.
    """
    hits, n_rel = _prepare(recs, relevant, None)
    out: dict[str, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        for name, per_user in _AT_K.items():
            out[f"{name}@{k}"] = _mean_over_users(per_user(hits[:, :k], n_rel, k), n_rel)
    out["mrr"] = _mean_over_users(_reciprocal_rank(hits, n_rel), n_rel)
    out["n_users"] = float((n_rel > 0).sum())
    return out


# --- beyond accuracy ---------------------------------------------------------------
def catalog_coverage(recs: np.ndarray, n_items: int) -> float:
    """``|distinct items in recs (ignoring -1)| / n_items``."""
    recs = np.asarray(recs)
    return float(np.unique(recs[recs >= 0]).size / n_items)


def intra_list_diversity(
    recs: np.ndarray, item_vectors: np.ndarray, batch_size: int = 4096
) -> float:
    """Mean over lists of ``mean_{a != b} (1 - cos(v_a, v_b))`` within the list.

    Lists with fewer than two items (after dropping ``-1``) are skipped; ``nan`` if
    none is left. Batched as ``(B, K, D) @ (B, D, K)`` over ``batch_size`` users.

    Args:
        recs: ``(U, K)`` int item indices, ``-1`` padding.
        item_vectors: ``(I, D)`` float item vectors (zero vectors have cosine 0).
    """
    recs = np.asarray(recs, dtype=np.int64)
    vectors = np.asarray(item_vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)  # (I, D)
    width = recs.shape[1]
    off_diag = ~np.eye(width, dtype=bool)
    per_list: list[np.ndarray] = []
    for start in range(0, recs.shape[0], batch_size):
        block = recs[start : start + batch_size]  # (B, K)
        valid = block >= 0
        v = unit[np.where(valid, block, 0)] * valid[..., None]  # (B, K, D)
        sim = v @ v.transpose(0, 2, 1)  # (B, K, K)
        pair = valid[:, :, None] & valid[:, None, :] & off_diag  # (B, K, K)
        n = valid.sum(1)
        keep = n >= 2
        dist = ((1.0 - sim) * pair).sum((1, 2))
        per_list.append(dist[keep] / (n[keep] * (n[keep] - 1)))
    scores = np.concatenate(per_list) if per_list else np.empty(0)
    return float(scores.mean()) if scores.size else float("nan")


def popularity_scores(train_item_idx: np.ndarray, n_items: int) -> np.ndarray:
    """``(I,)`` float64 interaction counts per item: the popularity baseline's scores."""
    idx = np.asarray(train_item_idx, dtype=np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= n_items):
        raise ValueError(f"train_item_idx must lie in [0, {n_items})")
    return np.bincount(idx, minlength=n_items).astype(np.float64)


# --- pointwise metrics -------------------------------------------------------------
def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by Mann–Whitney U with average ranks for ties.

    ``AUC = (sum_{i in pos} rank_i - P(P+1)/2) / (P N)``, which equals
    ``P(s_pos > s_neg) + 0.5 P(s_pos = s_neg)`` over all pairs. ``nan`` if a class is empty.
    Labels are positive where ``> 0.5``.
    """
    pos = np.asarray(labels, dtype=np.float64).ravel() > 0.5
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if pos.shape != scores.shape:
        raise ValueError(f"labels {pos.shape} and scores {scores.shape} differ")
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # 1-based rank of each tie group's last member
    mean_rank = upper - (counts - 1) / 2.0
    rank_sum = mean_rank[inverse][pos].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """``-mean(y log p + (1 - y) log(1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]``."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1.0 - eps)
    if y.size == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def rmse(targets: np.ndarray, preds: np.ndarray) -> float:
    """``sqrt(mean((y - y_hat)^2))``."""
    y = np.asarray(targets, dtype=np.float64).ravel()
    y_hat = np.asarray(preds, dtype=np.float64).ravel()
    if y.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean((y - y_hat) ** 2)))
