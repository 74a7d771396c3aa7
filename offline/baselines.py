"""Strong simple recommenders to measure the stack against, on the same split.

Each takes the users' earlier interactions as a dense 0/1 matrix and returns scores
``(U, I)``: popularity (counts), recent popularity (counts over the latest 10 % of
interactions), EASE (Steck 2019: ``B = I − P / diag(P)``, ``P = (XᵀX + λI)⁻¹``, zero
diagonal) and item-kNN (cosine item–item similarity, each item's strongest neighbours).
Used by the offline evaluation and by ``bench/holdout.py``; the item–item models are
dense ``I × I``, so they run up to :data:`MAX_DENSE_ITEMS` items.

Legend: U users scored, A every user of the matrix, I items.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_DENSE_ITEMS", "baseline_scores"]

MAX_DENSE_ITEMS = 20_000
EASE_LAMBDA = 200.0
KNN_NEIGHBOURS = 100


def baseline_scores(
    everyone: np.ndarray, rows: np.ndarray, times: np.ndarray, items: np.ndarray, scored: np.ndarray
) -> dict[str, np.ndarray]:
    """Scores of each baseline for the ``scored`` users.

    Args:
        everyone: (A, I) float 0/1: every user's earlier items.
        rows, times, items: (n,) every earlier interaction (user row of ``everyone``,
            time, item), for the popularity counts.
        scored: (U,) rows of ``everyone`` to score.

    Returns:
        name -> (U, I) float scores (higher first); the item–item models only up to
        :data:`MAX_DENSE_ITEMS` items.
    """
    n_items = everyone.shape[1]
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    recent = items[times >= np.quantile(times, 0.9)] if len(times) else items
    # ties in the recent counts fall back on all-time popularity
    recent_counts = np.bincount(recent, minlength=n_items) + counts * 1e-6
    x = everyone[scored]  # (U, I)
    out = {
        "popularity": np.broadcast_to(counts, x.shape),
        "recent popularity": np.broadcast_to(recent_counts, x.shape),
    }
    if n_items > MAX_DENSE_ITEMS:
        return out
    gram = everyone.T.astype(np.float64) @ everyone  # (I, I)
    p = np.linalg.inv(gram + EASE_LAMBDA * np.eye(n_items))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    out[f"EASE (λ {EASE_LAMBDA:g})"] = x @ b
    norms = np.sqrt(np.diag(gram)) + 1e-9
    sim = gram / norms[:, None] / norms[None, :]
    np.fill_diagonal(sim, 0.0)
    if KNN_NEIGHBOURS < n_items:  # keep each item's strongest neighbours
        cut = np.partition(sim, -KNN_NEIGHBOURS, axis=0)[-KNN_NEIGHBOURS]
        sim = np.where(sim >= cut[None, :], sim, 0.0)
    out[f"item-kNN ({KNN_NEIGHBOURS})"] = x @ sim
    return out
