"""Approximate search on learned embeddings: FAISS indexes swept against exact search.

    python bench/index.py --bundle DIR [--queries 1000] [--ks 10 200] [--only WORD …] [--markdown]

Reads a bundle's item serving vectors and, as queries, an even sample of its users'
(``DIR`` a bundle or a bundles folder: its newest; ``bench/scale.py --artifacts DIR``
leaves one of a million items). Builds exact inner-product search, HNSW (M 16 and 32;
and M 32 under L2 on the vectors of the inner-product → L2 reduction, queries padded with 0),
IVF-Flat (4·√n lists), IVF with an HNSW coarse quantizer over more lists, and IVF-PQ
re-ranked by exact distances (``IndexRefineFlat``), then searches each at a sweep of
depths (``efSearch``, ``nprobe``) and prints Recall@k against exact search and query
speed (FAISS batch search over the queries, every core) as a multiple of exact search's.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from offline.index import exact_search, index_quality, set_depth
from offline.metrics import even_sample
from shared.bundle import Bundle, Files

Factory = Callable[[np.ndarray], faiss.Index]


def _candidates(n: int, d: int) -> dict[str, tuple[Factory, str, tuple[int, ...]]]:
    """name -> (build on the vectors, the depth parameter, the depths swept)."""
    nlist, many = max(1, int(4 * np.sqrt(n))), max(1, int(16 * np.sqrt(n)))
    ip = faiss.METRIC_INNER_PRODUCT
    sub = next(m for m in (13, 16, 8, 5, 4, 2, 1) if d % m == 0)  # PQ sub-vectors

    def hnsw(m: int) -> Factory:
        def build(x: np.ndarray) -> faiss.Index:
            index = faiss.IndexHNSWFlat(d, m, ip)
            index.hnsw.efConstruction = 200
            return index

        return build

    def factory(spec: str, refine: bool = False) -> Factory:
        def build(x: np.ndarray) -> faiss.Index:
            index = faiss.index_factory(d, spec, ip)
            return faiss.IndexRefineFlat(index) if refine else index

        return build

    probes = (1, 2, 4, 8, 16, 32, 64, 128)

    def hnsw_l2(x: np.ndarray) -> faiss.Index:  # on _to_l2's vectors (one more dimension)
        index = faiss.IndexHNSWFlat(d + 1, 32)
        index.hnsw.efConstruction = 200
        return index

    return {
        "HNSW M32, L2 on [v; √(M²−|v|²)]": (hnsw_l2, "efSearch", (16, 32, 64, 128, 256, 512)),
        "HNSW M16": (hnsw(16), "efSearch", (16, 32, 64, 128, 256, 512)),
        "HNSW M32": (hnsw(32), "efSearch", (16, 32, 64, 128, 256, 512)),
        f"IVF{nlist},Flat": (factory(f"IVF{nlist},Flat"), "nprobe", probes),
        f"IVF{many}_HNSW32,Flat": (factory(f"IVF{many}_HNSW32,Flat"), "nprobe", probes),
        f"IVF{nlist},PQ{sub}x8 + refine": (
            factory(f"IVF{nlist},PQ{sub}x8", refine=True),
            "nprobe",
            probes,
        ),
    }


def _set(index: faiss.Index, depth: int, k: int) -> None:
    if isinstance(index, faiss.IndexRefine):
        set_depth(faiss.downcast_index(index.base_index), depth)
        index.k_factor = max(4.0, 400 / k)  # re-rank 4× (and at least 400) candidates
    else:
        set_depth(index, depth)


def _to_l2(x: np.ndarray) -> np.ndarray:
    """Maximum inner product as nearest neighbours (Bachrach et al. 2014): each vector gains
    ``√(M² − |v|²)`` (M the largest norm), a query 0, so ``|q − v|² = |q|² + M² − 2 q·v``.
    HNSW's graph then links by a true metric: inner product on vectors of unequal norms
    (the serving vectors' log-popularity coordinate) builds a graph that misleads search."""
    norms = np.einsum("nd,nd->n", x, x)
    extra = np.sqrt(np.maximum(norms.max() - norms, 0))[:, None].astype(np.float32)
    return np.ascontiguousarray(np.hstack([x, extra]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 200])
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--only", nargs="+", help="indexes whose name holds one of these words")
    args = parser.parse_args()
    root = args.bundle if (args.bundle / Files.MANIFEST).exists() else Bundle.open(args.bundle).root
    items = np.load(root / Files.ITEM_EMBEDDINGS, mmap_mode="r")[1:]  # row 0 = unknown item
    users = np.load(root / Files.USER_EMBEDDINGS, mmap_mode="r")
    x = np.ascontiguousarray(items, dtype=np.float32)
    q = np.ascontiguousarray(users[even_sample(np.arange(1, len(users)), args.queries)])
    n, d = x.shape
    print(f"{n:,} items × {d} dims, {len(q):,} user queries, {faiss.omp_get_max_threads()} threads")
    exact = faiss.IndexFlatIP(d)
    exact.add(x)
    truths = {k: exact_search(exact, q, k) for k in args.ks}
    for k, (_, qps) in truths.items():
        print(f"exact: k={k} {qps:,.0f} queries/s")
    rows = []
    for name, (build, parameter, depths) in _candidates(n, d).items():
        if args.only and not any(word in name for word in args.only):
            continue
        started = time.perf_counter()
        l2 = "L2" in name
        base = _to_l2(x) if l2 else x
        index = build(base)
        index.train(base)
        index.add(base)
        built = time.perf_counter() - started
        queries = np.hstack([q, np.zeros((len(q), 1), np.float32)]) if l2 else q
        for depth in depths:
            got = []
            for k, (truth, exact_qps) in truths.items():
                _set(index, depth, k)
                quality = index_quality(index, queries, truth, exact_qps)
                got.append((k, quality["recall_vs_exact"], quality["index_qps"], exact_qps))
            rows.append((name, f"{parameter} {depth}", built, got))
            print(f"{name:28s} {parameter} {depth:4d} (build {built:5.0f} s): " + "; ".join(
                f"recall@{k} {r:.3f} at {s:,.0f}/s (×{s / e:.1f})" for k, r, s, e in got
            ), flush=True)  # fmt: skip
    if args.markdown:
        head = " | ".join(f"recall@{k} | ×exact@{k}" for k in args.ks)
        print(f"\n| index | depth | build s | {head} |")
        print("|---|---|---:|" + "---:|---:|" * len(args.ks))
        for name, depth, built, got in rows:
            cells = " | ".join(f"{r:.3f} | {s / e:.1f}" for _, r, s, e in got)
            print(f"| {name} | {depth} | {built:.0f} | {cells} |")


if __name__ == "__main__":
    main()
