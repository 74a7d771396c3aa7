"""Publishing speed: U users × K items of recall lists into a real Redis.

    python bench/publish.py [--users 100000] [--k 200] [--redis-url URL] [--cluster 3]

Starts its own redis-server on a free port unless --redis-url is given; ``--cluster N``
starts a local N-master Redis Cluster instead (every node written at once).
"""

from __future__ import annotations

import argparse

import numpy as np

from offline.publish import PublishConfig, publish
from shared.keys import Keys
from shared.redis_server import LocalCluster, RedisServer
from shared.store import connect


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=PublishConfig().batch_size)
    parser.add_argument("--redis-url")
    parser.add_argument("--cluster", type=int, default=0, help="masters of a local cluster")
    args = parser.parse_args()
    server = None
    if not args.redis_url:
        server = (LocalCluster(args.cluster) if args.cluster else RedisServer()).start()
    client = connect(args.redis_url or server.url, bool(args.cluster), socket_timeout=60)
    try:
        rng = np.random.default_rng(0)
        recall = rng.integers(1, args.items + 1, (args.users, args.k))
        item_ids = np.array([""] + [f"item{i}" for i in range(1, args.items + 1)], dtype=object)
        user_ids = [f"user{u}" for u in range(args.users)]
        hot = np.arange(1, 201)
        for version in ("bench-a", "bench-b"):
            stats = publish(
                client,
                Keys("bench:"),
                version,
                user_ids,
                recall,
                item_ids,
                hot,
                np.linspace(1, 0, 200),
                {"dataset": "bench"},
                PublishConfig(batch_size=args.batch),
            )
            print(
                f"{version}: {stats['users']:,} users × {args.k} items = {stats['items_written']:,} members "
                f"in {stats['seconds']:.1f} s ({stats['items_written'] / stats['seconds']:,.0f} members/s, "
                f"{stats['users'] / stats['seconds']:,.0f} users/s); redis used_memory "
                f"{_memory(client)}"
            )
    finally:
        client.close()
        if server:
            server.stop()


def _memory(client) -> str:
    info = client.info("memory")
    if "used_memory_human" in info:
        return info["used_memory_human"]
    return " + ".join(v["used_memory_human"] for v in info.values())  # a cluster: per node


if __name__ == "__main__":
    main()
