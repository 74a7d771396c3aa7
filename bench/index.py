"""FAISS index build and query speed for a large catalog: exact vs approximate.

    python bench/index.py [--items 1000000] [--dim 64] [--queries 2000] [--k 200]

Vectors are clustered (like trained item embeddings, unlike uniform noise) and L2-
normalised; each index's Recall@k is measured against exact inner-product search.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from offline.index import IndexConfig, build_index, index_quality


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument(
        "--spread",
        type=float,
        default=1.0,
        help="noise around cluster centres (1.0: clusters overlap)",
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, args.dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, args.items)] + 0.5 * rng.normal(
        size=(args.items, args.dim)
    ).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = centres[rng.integers(0, 1000, args.queries)] + 0.5 * rng.normal(
        size=(args.queries, args.dim)
    ).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for kind, extra in (
        ("flat", {}),
        ("hnsw", {"hnsw_m": 32, "hnsw_ef_search": 256}),
        ("ivf", {"ivf_nprobe": 32}),
    ):
        t = time.perf_counter()
        index = build_index(x, IndexConfig(kind=kind, **extra))
        build = time.perf_counter() - t
        qual = index_quality(index, x, q, args.k)
        print(
            f"{kind:5s}: build {build:6.1f} s, {qual['index_qps']:9,.0f} queries/s "
            f"(exact {qual['exact_qps']:,.0f}/s, ×{qual['index_qps'] / qual['exact_qps']:.1f}), "
            f"recall@{args.k} vs exact {qual['recall_vs_exact']:.3f}"
        )


if __name__ == "__main__":
    main()
