"""Recall lists, defined once for the worker's batch recall and the gateway alike.

- :class:`SeenItems`: each user's interacted item rows (CSR), and batched membership.
- :func:`faiss_rows`, :func:`nearest`: FAISS id ``j`` is item row ``j + 1`` (row 0 is
  the unknown item); the nearest item rows of user vectors.
- :func:`merge`: the one policy that turns a model's list and the hot list into the
  list served: drop unknown rows (``<= 0``), repeats and the user's seen items, put one
  hot item after every ``hot_every`` model items (0: hot items only after the model's
  list, as padding), cut to ``k``.

Every function works on whole arrays: no Python loop per user or per item.

Legend: U users, R items of a model list, H hot items, K merged length.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

__all__ = ["SeenItems", "blend", "faiss_rows", "merge", "nearest"]


@dataclass(frozen=True)
class SeenItems:
    """Each user's interacted item rows as CSR arrays: ``items[indptr[u]:indptr[u + 1]]``."""

    indptr: np.ndarray  # (U + 1,) int64
    items: np.ndarray  # (nnz,) int64, sorted within each user
    n_items: int  # item rows, row 0 included

    @classmethod
    def build(
        cls, user_rows: np.ndarray, item_rows: np.ndarray, n_users: int, n_items: int
    ) -> SeenItems:
        """From interaction pairs (repeats allowed); ``n_users``/``n_items`` count row 0 too."""
        keys = np.unique(user_rows.astype(np.int64) * n_items + item_rows.astype(np.int64))
        users, items = np.divmod(keys, n_items)
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
        return cls(indptr=indptr, items=items, n_items=n_items)

    def of(self, user_row: int) -> np.ndarray:
        """Item rows the user interacted with (empty for row 0, the unknown user)."""
        return self.items[self.indptr[user_row] : self.indptr[user_row + 1]]

    def most(self) -> int:
        """The largest number of items one user has seen."""
        return int(np.diff(self.indptr).max(initial=0))

    def contains(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """Whether each user has seen each item: ``user_rows (U,)``, ``item_rows (U, R)`` → bool."""
        users = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        keys = users * self.n_items + self.items  # sorted: users ascending, items within
        query = np.asarray(user_rows, dtype=np.int64)[:, None] * self.n_items + item_rows
        if not len(keys):
            return np.zeros(query.shape, dtype=bool)
        at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        return (keys[at] == query) & (item_rows > 0)


def faiss_rows(found: np.ndarray) -> np.ndarray:
    """Item rows of FAISS ids (id ``j`` ↔ row ``j + 1``); FAISS's ``-1`` padding becomes 0."""
    return np.where(found >= 0, found + 1, 0).astype(np.int64)


def nearest(index: faiss.Index, vectors: np.ndarray, k: int) -> np.ndarray:
    """``(U, ≤k)`` item rows nearest each of ``vectors (U, O)``, best first; 0 = none.

    ``k`` is capped at the catalogue; FAISS pads missing hits, which become 0.
    """
    k = min(k, index.ntotal)
    if k <= 0:
        return np.zeros((len(vectors), 0), dtype=np.int64)
    _, found = index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
    return faiss_rows(found)


def merge(
    model: np.ndarray,
    hot: np.ndarray,
    k: int,
    hot_every: int = 0,
    banned: np.ndarray | None = None,
) -> np.ndarray:
    """The served list of each user: the model's items with the hot list merged in.

    Args:
        model: (U, R) item rows per user, best first; ``<= 0`` = no item.
        hot: (H,) item rows, hottest first.
        k: length of each merged list.
        hot_every: one hot item after every this many model items; 0 puts the hot list
            after the whole model list (padding only).
        banned: (U, R + H) bool, True where the candidate (model items, then hot items)
            must not be served (an item the user already interacted with), or None.

    Returns:
        (U, K) item rows, first occurrence of each kept, 0 where fewer exist.
    """
    n_users, r = model.shape
    h = len(hot)
    candidates = np.concatenate([model, np.broadcast_to(hot, (n_users, h))], axis=1)  # (U, R+H)
    valid = candidates > 0
    if banned is not None:
        valid &= ~banned
    if hot_every > 0:
        j, m = np.arange(r), np.arange(h)
        position = np.concatenate([j + j // hot_every, (m + 1) * hot_every + m])
        order = np.argsort(position, kind="stable")
        candidates, valid = candidates[:, order], valid[:, order]
    # drop repeats: sort each row by id; a value equal to its left neighbour is a repeat
    by_id = np.argsort(np.where(valid, candidates, 0), axis=1, kind="stable")
    sorted_ids = np.take_along_axis(candidates, by_id, axis=1)
    sorted_valid = np.take_along_axis(valid, by_id, axis=1)
    repeat = np.zeros_like(valid)
    same = (sorted_ids[:, 1:] == sorted_ids[:, :-1]) & sorted_valid[:, :-1] & sorted_valid[:, 1:]
    np.put_along_axis(repeat, by_id[:, 1:], same, axis=1)
    valid &= ~repeat
    rank = np.cumsum(valid, axis=1) - 1
    keep = valid & (rank < k)
    out = np.zeros((n_users, k), dtype=np.int64)
    out[np.nonzero(keep)[0], rank[keep]] = candidates[keep]
    return out


def blend(first: np.ndarray, second: np.ndarray, weight: float) -> np.ndarray:
    """Two ranked lists of item rows interleaved, ``weight`` of the places from ``first``.

    The ``j``-th item of ``first`` sits at ``(j + ½) / weight``, the ``m``-th of ``second``
    at ``(m + ½) / (1 − weight)``; in that order, each item's first place is kept
    (``weight`` 0: ``second`` alone, 1: ``first`` alone).
    """
    w = min(max(weight, 0.0), 1.0)
    parts = [(first, w), (second, 1.0 - w)]
    rows = np.concatenate(
        [p for p, share in parts if share > 0 and len(p)] or [np.empty(0, np.int64)]
    )
    at = np.concatenate(
        [(np.arange(len(p)) + 0.5) / share for p, share in parts if share > 0 and len(p)]
        or [np.empty(0)]
    )
    rows = rows[np.argsort(at, kind="stable")]
    _, first_place = np.unique(rows, return_index=True)
    return rows[np.sort(first_place)].astype(np.int64)
