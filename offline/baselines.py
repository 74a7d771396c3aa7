"""Strong simple recommenders to measure the stack against, on the same split.

From the users' earlier interactions: popularity (counts), recent popularity (counts
over the latest 10 % of interactions), EASE (Steck 2019: ``B = I − P / diag(P)``,
``P = (XᵀX + λI)⁻¹``, zero diagonal) and item-kNN (cosine item–item similarity, each
item's strongest neighbours). Used by the offline evaluation and by ``bench/holdout.py``.
The interactions are a sparse matrix and users are scored in blocks, so memory stays
bounded at any catalogue size; the item–item models are dense ``I × I`` and run up to
:data:`MAX_DENSE_ITEMS` items.

Legend: U users scored, A every user of the matrix, I items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse

from offline.metrics import SCORE_BLOCK, topk_from_scores

__all__ = ["MAX_DENSE_ITEMS", "baseline_lists"]

MAX_DENSE_ITEMS = 20_000
EASE_LAMBDA = 200.0
KNN_NEIGHBOURS = 100


def baseline_lists(
    rows: np.ndarray,
    items: np.ndarray,
    times: np.ndarray,
    shape: tuple[int, int],
    scored: np.ndarray,
    k: int,
    never: Sequence[int] = (),
) -> dict[str, np.ndarray]:
    """Each baseline's top ``k`` for the ``scored`` users, their earlier items excluded.

    Args:
        rows, items, times: (n,) every earlier interaction: user row, item column, time.
        shape: (A, I) users and items of the matrix.
        scored: (U,) user rows to score.
        k: list length.
        never: item columns never recommended nor read (e.g. row 0, the unknown item).

    Returns:
        name -> (U, k) item columns, best first (-1 pads); the item–item models only up
        to :data:`MAX_DENSE_ITEMS` items.
    """
    n_items = shape[1]
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    recent = items[times >= np.quantile(times, 0.9)] if len(times) else items
    # ties in the recent counts fall back on all-time popularity
    recent_counts = np.bincount(recent, minlength=n_items) + counts * 1e-6
    read = ~np.isin(items, never)
    x = scipy.sparse.csr_matrix((np.ones(int(read.sum())), (rows[read], items[read])), shape=shape)
    x.data[:] = 1.0  # repeats count once
    shared = {"popularity": counts, "recent popularity": recent_counts}  # one order for all
    models: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if n_items <= MAX_DENSE_ITEMS:
        gram = (x.T @ x).toarray()  # (I, I)
        p = np.linalg.inv(gram + EASE_LAMBDA * np.eye(n_items))
        b = -p / np.diag(p)
        np.fill_diagonal(b, 0.0)
        norms = np.sqrt(np.diag(gram)) + 1e-9
        sim = gram / norms[:, None] / norms[None, :]
        np.fill_diagonal(sim, 0.0)
        if KNN_NEIGHBOURS < n_items:  # keep each item's strongest neighbours
            cut = np.partition(sim, -KNN_NEIGHBOURS, axis=0)[-KNN_NEIGHBOURS]
            sim = np.where(sim >= cut[None, :], sim, 0.0)
        models[f"EASE (λ {EASE_LAMBDA:g})"] = lambda xb: xb @ b
        models[f"item-kNN ({KNN_NEIGHBOURS})"] = lambda xb: xb @ sim
    out = {name: _shared_top(x[scored], scores, k, never) for name, scores in shared.items()}
    step = max(1, SCORE_BLOCK // max(n_items, 1))
    for name, scores in models.items():
        out[name] = np.empty((len(scored), k), dtype=np.int64)
        for lo in range(0, len(scored), step):
            xb = x[scored[lo : lo + step]].toarray()  # (block, I)
            exclude = xb > 0
            exclude[:, list(never)] = True
            out[name][lo : lo + step] = topk_from_scores(scores(xb), k, exclude)
    return out


def _shared_top(
    x: scipy.sparse.csr_matrix, scores: np.ndarray, k: int, never: Sequence[int]
) -> np.ndarray:
    """(U, k) each user's top ``k`` of one score vector ``(I,)``, their items ``x (U, I)``
    excluded: the global order's first ``k`` + the most any user has seen, filtered."""
    ranked = np.argsort(-scores, kind="stable")
    head = ranked[~np.isin(ranked, never)][: k + int(np.diff(x.indptr).max(initial=0))]
    seen = x[:, head].toarray() > 0  # (U, k + most)
    place = np.sort(np.where(seen, len(head), np.arange(len(head))), axis=1)[:, :k]
    top = np.where(place < len(head), head[place.clip(max=len(head) - 1)], -1)
    if top.shape[1] < k:
        top = np.pad(top, ((0, 0), (0, k - top.shape[1])), constant_values=-1)
    return top
