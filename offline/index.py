"""FAISS index of item embeddings, its quality, and batch recall for every known user.

Exact inner product (``IndexFlatIP``) up to ``exact_max_items`` items, HNSW or IVF
above; the index's Recall@K against exact search and its query speed are measured on
the real embeddings. Batch recall takes each user's top K from the index and merges
it with the global hot list by :func:`shared.recall.merge`, the policy the gateway
uses too — all as array operations, no loop per user.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import faiss
import numpy as np
from pydantic import Field

from shared.config import StrictConfig

__all__ = ["IndexConfig", "build_index", "index_quality"]

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
    hot_every: int = Field(
        0,
        ge=0,
        description="one hot item after every this many recalled ones (0: hot items pad the end)",
    )


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
