"""ETL speed: MovieLens-100K, and a synthetic log of N impressions (default 10M).

    python bench/etl.py [--impressions 10000000] [--ml100k ../shared/data/ml-100k]

Prints wall time per stage and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from offline import etl
from offline.datasets import load_dataset


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impressions", type=int, default=10_000_000)
    parser.add_argument(
        "--ml100k", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ml-100k"
    )
    args = parser.parse_args()
    if (args.ml100k / "u.data").is_file():
        t = time.perf_counter()
        data = load_dataset("movielens-100k", args.ml100k)
        t_load = time.perf_counter() - t
        result = etl.run(data, etl.EtlConfig())
        print(
            f"ml-100k: read {t_load:.2f} s, read+etl {time.perf_counter() - t:.2f} s "
            f"({result.stats['interactions']} interactions)"
        )
    t = time.perf_counter()
    n_users, n_items = max(1000, args.impressions // 100), max(500, args.impressions // 1000)
    data = load_dataset(
        "synthetic",
        options={"n_users": n_users, "n_items": n_items, "n_impressions": args.impressions},
    )
    t_gen = time.perf_counter() - t
    rss_gen = peak_mb()
    t = time.perf_counter()
    result = etl.run(data, etl.EtlConfig())
    t_etl = time.perf_counter() - t
    print(
        f"synthetic {args.impressions:,} impressions ({n_users:,} users, {n_items:,} items): "
        f"generate {t_gen:.1f} s (peak RSS {rss_gen:,.0f} MB), etl {t_etl:.1f} s "
        f"({args.impressions / t_etl:,.0f} impressions/s), peak RSS {peak_mb():,.0f} MB"
    )
    print(f"  split: {result.stats['split']}, feature slots {result.stats['feature_slots']:,}")


if __name__ == "__main__":
    main()
