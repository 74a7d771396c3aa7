"""FAISS index of item embeddings, its quality, and batch recall for every known user.

Exact inner product (``IndexFlatIP``) up to ``exact_max_items`` items; above, ``auto``
builds HNSW and IVF and searches each at several depths (``efSearch``, ``nprobe``) with
real user vectors: the fastest whose Recall@K against exact search reaches
``recall_floor`` serves, and the sweep is kept in the bundle's metrics. Batch recall takes each user's top K from the index and merges
it with the global hot list by :func:`shared.recall.merge`, the policy the gateway
uses too — all as array operations, no loop per user.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import faiss
import numpy as np
from pydantic import Field

from shared.config import StrictConfig

__all__ = ["IndexConfig", "build_index", "exact_search", "index_quality", "set_depth"]

log = logging.getLogger(__name__)


class IndexConfig(StrictConfig):
    kind: Literal["auto", "flat", "hnsw", "ivf"] = Field(
        "auto",
        description="auto: exact search up to exact_max_items; above, HNSW and IVF searched "
        "at each depth of auto_ef_search / auto_nprobe, the fastest with recall_floor serves",
    )
    exact_max_items: int = Field(
        100_000, ge=1, description="auto: exact search up to this many items"
    )
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(128, ge=8, description="kind hnsw: its search depth")
    ivf_nlist: int | None = Field(None, ge=1, description="default: 4·√n")
    ivf_nprobe: int = Field(32, ge=1, description="kind ivf: lists searched")
    auto_ef_search: tuple[int, ...] = Field((128, 256, 512), min_length=1)
    auto_nprobe: tuple[int, ...] = Field((8, 16, 32, 64, 128, 256), min_length=1)
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


def build_index(
    vectors: np.ndarray, config: IndexConfig, queries: np.ndarray
) -> tuple[faiss.Index, dict[str, Any]]:
    """An inner-product index over ``vectors`` (n, d), ids = row positions, and its
    :func:`index_quality` at ``config.recall_k`` on ``queries`` (with ``build_s``;
    ``auto`` above ``exact_max_items``: every index and depth it tried, as ``tried``)."""
    n, d = vectors.shape
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    exact = faiss.IndexFlatIP(d)
    exact.add(x)
    truth, exact_qps = exact_search(exact, queries, config.recall_k)
    auto = config.kind == "auto"
    if config.kind == "flat" or (auto and n <= config.exact_max_items):
        return exact, index_quality(exact, queries, truth, exact_qps) | {"build_s": 0.0}
    tried: list[tuple[faiss.Index, dict[str, Any]]] = []
    for kind in ("hnsw", "ivf") if auto else (config.kind,):
        started = time.perf_counter()
        index = _approximate(kind, x, config)
        built = {"build_s": time.perf_counter() - started}
        depths = {
            "hnsw": config.auto_ef_search if auto else (config.hnsw_ef_search,),
            "ivf": config.auto_nprobe if auto else (config.ivf_nprobe,),
        }[kind]
        for depth in depths:
            set_depth(index, depth)
            tried.append((index, index_quality(index, queries, truth, exact_qps) | built))
    good = [t for t in tried if t[1]["recall_vs_exact"] >= config.recall_floor]
    index, quality = (
        max(good, key=lambda t: t[1]["index_qps"])
        if good
        else max(tried, key=lambda t: t[1]["recall_vs_exact"])
    )
    set_depth(index, quality["depth"])
    if auto:
        quality = quality | {"tried": [q for _, q in tried]}
    return index, quality


def _approximate(kind: str, x: np.ndarray, config: IndexConfig) -> faiss.Index:
    n, d = x.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
    else:
        nlist = config.ivf_nlist or max(1, int(4 * np.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
    index.add(x)
    return index


def set_depth(index: faiss.Index, depth: int | None) -> None:
    """HNSW's ``efSearch`` or IVF's ``nprobe`` (nothing for exact search)."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = depth
    elif (ivf := faiss.try_extract_index_ivf(index)) is not None:
        ivf.nprobe = depth


def _depth(index: faiss.Index) -> int | None:
    if isinstance(index, faiss.IndexHNSW):
        return int(index.hnsw.efSearch)
    if (ivf := faiss.try_extract_index_ivf(index)) is not None:
        return int(ivf.nprobe)
    return None


def exact_search(exact: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """(Q, k) ids of the true nearest items of ``queries`` by ``exact`` (a flat index),
    and its queries/s."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    started = time.perf_counter()
    _, truth = exact.search(q, min(k, exact.ntotal))
    return truth, len(q) / max(time.perf_counter() - started, 1e-9)


def index_quality(
    index: faiss.Index, queries: np.ndarray, truth: np.ndarray, exact_qps: float
) -> dict[str, Any]:
    """Recall of ``index`` against the exact neighbours ``truth`` (Q, k) of ``queries``,
    and both query speeds (queries/s): FAISS's batch search, its threads on the queries."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    started = time.perf_counter()
    _, found = index.search(q, truth.shape[1])
    qps = len(q) / max(time.perf_counter() - started, 1e-9)
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2) & (found >= 0)
    return {
        "type": type(index).__name__,
        "depth": _depth(index),
        "items": int(index.ntotal),
        "k": int(truth.shape[1]),
        "recall_vs_exact": float(hits.sum() / max(truth.size, 1)),
        "exact_qps": exact_qps,
        "index_qps": qps,
    }
