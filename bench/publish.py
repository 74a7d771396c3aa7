"""Publishing speed: U users × K items of recall lists into a real Redis.

    python bench/publish.py [--users 100000] [--k 200] [--rounds 2] [--redis-url URL] [--cluster 3]

Starts its own redis-server on a free port unless --redis-url is given; ``--cluster N``
starts a local N-master Redis Cluster instead (every node written at once). On its own
servers each round publishes twice, alternated: with the server's default
``zset-max-listpack-entries`` (128: lists of 200 arrive as zset2 payloads and become
skiplists) and with it raised to the list length (listpack payloads, stored as they come).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import time

import numpy as np
import redis

from offline.publish import PublishConfig, publish
from shared.keys import Keys
from shared.redis_server import LocalCluster, RedisServer
from shared.store import connect, primaries


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=PublishConfig().batch_size)
    parser.add_argument("--redis-url")
    parser.add_argument("--cluster", type=int, default=0, help="masters of a local cluster")
    parser.add_argument("--rounds", type=int, default=2)
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
        settings = [None] if args.redis_url else [128, max(128, args.k)]
        for round_, entries in itertools.product(range(args.rounds), settings):
            version = f"bench-{round_}-{entries}"
            for node in primaries(client):
                if entries:
                    node.config_set("zset-max-listpack-entries", entries)
                node.flushdb()  # each run into an empty server
            stalls = _Stalls(primaries(client)[0])
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
            stalls.stop()
            print(
                f"{version} ({stats['encoding']}): {stats['users']:,} users × {args.k} items = {stats['items_written']:,} members "
                f"in {stats['seconds']:.1f} s ({stats['items_written'] / stats['seconds']:,.0f} members/s, "
                f"{stats['users'] / stats['seconds']:,.0f} users/s); redis used_memory "
                f"{_memory(client)}; another client's PING p99 {stalls.quantile(0.99):.1f} ms, "
                f"max {stalls.quantile(1.0):.1f} ms"
            )
    finally:
        client.close()
        if server:
            server.stop()


class _Stalls:
    """What the publish costs other clients of a server: a PING every 10 ms from another
    process (no share of this one's GIL), timed."""

    def __init__(self, node) -> None:
        self.done = multiprocessing.Event()
        self.receive, send = multiprocessing.Pipe(duplex=False)
        kwargs = {k: node.connection_pool.connection_kwargs[k] for k in ("host", "port")}
        self.process = multiprocessing.Process(target=_ping, args=(kwargs, self.done, send))
        self.process.start()
        self.ms: list[float] = []

    def stop(self) -> None:
        self.done.set()
        self.ms = self.receive.recv()
        self.process.join()

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.ms, q)) if self.ms else float("nan")


def _ping(kwargs: dict, done, send) -> None:
    client, ms = redis.Redis(**kwargs), []
    while not done.wait(0.01):
        started = time.perf_counter()
        client.ping()
        ms.append(1000 * (time.perf_counter() - started))
    send.send(ms)


def _memory(client) -> str:
    info = client.info("memory")
    if "used_memory_human" in info:
        return info["used_memory_human"]
    return " + ".join(v["used_memory_human"] for v in info.values())  # a cluster: per node


if __name__ == "__main__":
    main()
