"""FAISS index of item embeddings, its quality, and batch recall for every known user.

Exact inner product (``IndexFlatIP``) up to ``exact_max_items`` items, HNSW or IVF
above; the index's Recall@K against exact search and its query speed are measured on
the real embeddings. Batch recall takes each user's top K from the index, leaves out
what the user already interacted with, and interleaves the global hot list without
duplicates — all as array operations, no loop per user.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import faiss
import numpy as np
from pydantic import Field

from shared.config import StrictConfig

__all__ = ["IndexConfig", "build_index", "index_quality", "interleave", "search"]

log = logging.getLogger(__name__)


class IndexConfig(StrictConfig):
    kind: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    exact_max_items: int = Field(
        100_000, ge=1, description="auto: exact search up to this many items"
    )
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(128, ge=8)
    ivf_nlist: int | None = Field(None, ge=1, description="default: 4·√n")
    ivf_nprobe: int = Field(32, ge=1)
    recall_k: int = Field(200, ge=1, description="items per user in the published recall list")
    recall_floor: float = Field(0.95, ge=0, le=1, description="least Recall@K against exact search")
    quality_queries: int = Field(1000, ge=1)
    exclude_seen: bool = True
    hot_n: int = Field(200, ge=1, description="items in the global hot list")
    hot_every: int = Field(4, ge=1, description="one hot item after every this many recalled ones")


def build_index(vectors: np.ndarray, config: IndexConfig) -> faiss.Index:
    """An inner-product index over ``vectors`` (n, d); ids are row positions."""
    n, d = vectors.shape
    kind = config.kind
    if kind == "auto":
        kind = "flat" if n <= config.exact_max_items else "hnsw"
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = config.hnsw_ef_search
    else:
        nlist = config.ivf_nlist or max(1, int(4 * np.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = config.ivf_nprobe
    index.add(x)
    return index


def index_quality(
    index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int
) -> dict[str, float]:
    """Recall@k of ``index`` against exact search, and both query speeds (queries/s)."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, vectors.shape[0])
    t0 = time.perf_counter()
    _, truth = exact.search(q, k)
    t1 = time.perf_counter()
    _, found = index.search(q, k)
    t2 = time.perf_counter()
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2) & (found >= 0)
    return {
        "type": type(index).__name__,
        "items": int(vectors.shape[0]),
        "k": k,
        "recall_vs_exact": float(hits.sum() / truth.size),
        "exact_qps": len(q) / max(t1 - t0, 1e-9),
        "index_qps": len(q) / max(t2 - t1, 1e-9),
    }


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the top ``k``; FAISS pads missing hits with id -1."""
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, index.ntotal))


def interleave(
    recalled: np.ndarray, hot: np.ndarray, k: int, every: int, banned: np.ndarray | None = None
) -> np.ndarray:
    """Merge each row of ``recalled`` with the hot list: ``every`` recalled, then one hot.

    Args:
        recalled: (U, R) item ids per user, best first; -1 = no item.
        hot: (H,) item ids, hottest first.
        k: length of each merged list.
        every: recalled items between two hot ones.
        banned: (U, R + H) bool, True where the candidate (recalled then hot) must go
            (an item the user already interacted with), or None.

    Returns:
        (U, k) item ids, duplicates removed (first occurrence kept), -1 where fewer exist.
    """
    n_users, r = recalled.shape
    h = len(hot)
    candidates = np.concatenate([recalled, np.broadcast_to(hot, (n_users, h))], axis=1)  # (U, R+H)
    j, m = np.arange(r), np.arange(h)
    position = np.concatenate([j + j // every, (m + 1) * every + m])  # merged order of each column
    order = np.argsort(position, kind="stable")
    candidates = candidates[:, order]
    valid = candidates >= 0
    if banned is not None:
        valid &= ~banned[:, order]
    # drop repeats: sort each row by id, a value equal to its left neighbour is a repeat
    by_id = np.argsort(np.where(valid, candidates, -1), axis=1, kind="stable")
    sorted_ids = np.take_along_axis(candidates, by_id, axis=1)
    sorted_valid = np.take_along_axis(valid, by_id, axis=1)
    repeat = np.zeros_like(valid)
    same = (sorted_ids[:, 1:] == sorted_ids[:, :-1]) & sorted_valid[:, :-1] & sorted_valid[:, 1:]
    np.put_along_axis(repeat, by_id[:, 1:], same, axis=1)
    valid &= ~repeat
    rank = np.cumsum(valid, axis=1) - 1
    keep = valid & (rank < k)
    out = np.full((n_users, k), -1, dtype=candidates.dtype)
    rows = np.nonzero(keep)[0]
    out[rows, rank[keep]] = candidates[keep]
    return out
