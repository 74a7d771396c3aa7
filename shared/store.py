"""Connections to the online store: one Redis server, or a Redis Cluster.

``RECSYS_REDIS_CLUSTER=true`` (``Settings.redis_cluster``) makes the worker and the
gateway use redis-py's cluster clients, given the URL of any node; the key layout
(:mod:`shared.keys`) keeps what one command or script must touch together in one hash
slot, and the publisher writes each node's keys over that node's own connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aredis
from redis.cluster import RedisCluster

__all__ = ["Client", "by_node", "connect", "connect_async", "node_client", "primaries"]

Client = redis.Redis | RedisCluster


def connect(url: str, cluster: bool = False, **options: Any) -> Client:
    """A synchronous client of ``url``: the server's, or the cluster's it belongs to."""
    if cluster:
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def connect_async(url: str, cluster: bool = False, **options: Any) -> Any:
    """An asyncio client of ``url`` (``redis.asyncio.Redis`` or ``RedisCluster``)."""
    if cluster:
        return aredis.RedisCluster.from_url(url, **options)
    return aredis.Redis.from_url(url, **options)


def node_client(client: Client, key: str | bytes) -> redis.Redis:
    """The plain client of the server holding ``key`` (``client`` itself off a cluster)."""
    if isinstance(client, RedisCluster):
        return client.get_node_from_key(key).redis_connection
    return client


def primaries(client: Client) -> list[redis.Redis]:
    """Each server's own client: the cluster's primaries, or the client itself."""
    if isinstance(client, RedisCluster):
        return [node.redis_connection for node in client.get_primaries()]
    return [client]


def by_node(client: Client, keys: Sequence[str]) -> list[tuple[redis.Redis, list[int]]]:
    """The positions of ``keys``, grouped by the server holding each (one group off a
    cluster), with that server's plain client."""
    if not isinstance(client, RedisCluster):
        return [(client, list(range(len(keys))))]
    groups: dict[str, tuple[redis.Redis, list[int]]] = {}
    for i, key in enumerate(keys):
        node = client.get_node_from_key(key)
        groups.setdefault(node.name, (node.redis_connection, []))[1].append(i)
    return list(groups.values())
