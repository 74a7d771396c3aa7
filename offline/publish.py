"""Publish a version to Redis: every key first, then the ``active`` flip, then clean-up.

1. The version is registered in ``pending`` before any of its keys is written, and
   every key is written with an expiry (``pending_ttl_s``); a publish that dies
   part-way leaves keys that expire on their own, and the next publish expires what a
   dead one left at once.
2. Writes go in pipelined batches (no round trip per key), each user's list replaced
   by one MULTI/EXEC of its own key (a reader never sees it half-written, and no
   transaction spans two hash slots), each batch sent to the server holding its keys: on a
   Redis Cluster (``shared.store``) every node is written over its own connection.
3. Only when every key of the version is written and counted are the expiries lifted,
   then ``active`` moves to it in one SET; until then the active version is as it was.
4. Versions older than the newest ``keep`` get a short expiry (readers still holding
   one finish their request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import redis
from pydantic import Field
from tqdm import tqdm

from shared.config import StrictConfig
from shared.errors import StoreError
from shared.keys import Keys
from shared.store import Client, by_node, node_client

__all__ = ["PublishConfig", "publish"]

log = logging.getLogger(__name__)


class PublishConfig(StrictConfig):
    batch_size: int = Field(
        100,
        ge=1,
        description="users per pipelined batch (one MULTI/EXEC per user's list, sent "
        "together to the server holding them)",
    )
    keep_versions: int = Field(2, ge=1)
    expire_after_s: int = Field(60, ge=1, description="grace before an old version's keys vanish")
    pending_ttl_s: int = Field(
        6 * 3600, ge=60, description="expiry of a version's keys until its publish completes"
    )
    abandoned_after_s: float = Field(
        120, gt=0, description="a pending publish silent this long is taken for dead"
    )


def publish(
    client: Client,
    keys: Keys,
    version: str,
    user_ids: Sequence[str],
    recall: np.ndarray,
    item_ids: np.ndarray,
    hot: np.ndarray,
    hot_scores: np.ndarray,
    meta: dict[str, str | int | float],
    config: PublishConfig,
    progress: bool = False,
) -> dict[str, float]:
    """Write ``version`` and make it active.

    Args:
        client: Redis connection.
        keys: the key layout.
        version: the bundle version.
        user_ids: (U,) raw user ids.
        recall: (U, K) item rows per user, best first, 0 = none.
        item_ids: (I,) raw item id of each item row.
        hot: (H,) item rows of the global hot list, hottest first.
        hot_scores: (H,) their hotness.
        meta: fields of the version's meta hash.
        config: batching and retention.

    Returns:
        Timings and counts.

    Raises:
        StoreError: Redis failed; the active version is unchanged.
    """
    started = time.perf_counter()
    k = recall.shape[1] if recall.ndim == 2 else 0
    lengths = (recall > 0).sum(axis=1)
    # RESP fragments are built once per item and per rank; a user's ZADD is then one
    # bytes join (redis-py would pack 400 arguments per user in Python)
    item_frag = np.array([_bulk(str(name).encode()) for name in item_ids], dtype=object)
    score_frag = np.array(
        [_bulk(str(k - j).encode()) for j in range(k)], dtype=object
    )  # higher = earlier
    ttl = b"%d" % config.pending_ttl_s
    try:
        _expire_abandoned(client, keys, version, config)
        client.zadd(keys.pending, {version: time.time()})
        batches = range(0, len(user_ids), config.batch_size)
        for lo in tqdm(batches, disable=not progress, desc="publish", unit="batch"):
            hi = min(lo + config.batch_size, len(user_ids))
            frags = np.empty((hi - lo, 2 * k), dtype=object)
            frags[:, 0::2] = score_frag
            frags[:, 1::2] = item_frag[np.maximum(recall[lo:hi], 0)]
            client.zadd(keys.pending, {version: time.time()})  # this publish is alive
            names = [keys.recall(version, uid) for uid in user_ids[lo:hi]]
            _transactions([
                (node, [_list_commands(names[i], frags[i], lengths[lo + i], ttl) for i in at])
                for node, at in by_node(client, names)
            ])  # fmt: skip
        hot_members = dict(zip(item_ids[hot].tolist(), hot_scores.tolist(), strict=True))
        meta = {**meta, "published_at": time.time(), "users": len(user_ids)}
        for key in (keys.global_hot(version), keys.meta(version)):
            pipe = node_client(client, key).pipeline(transaction=True)  # one key: one slot
            pipe.delete(key)
            if key == keys.meta(version):
                pipe.hset(key, mapping=meta)
            elif hot_members:
                pipe.zadd(key, hot_members)
            pipe.expire(key, config.pending_ttl_s)
            pipe.execute()
        ordered = np.sort(recall, axis=1)
        distinct = (ordered[:, :1] > 0).sum(axis=1) + (
            (ordered[:, 1:] != ordered[:, :-1]) & (ordered[:, 1:] > 0)
        ).sum(axis=1)
        _check_complete(client, keys, version, user_ids, distinct)
        _persist(client, keys, version, user_ids, config.batch_size)
        client.set(keys.active, version)  # the flip: one command
        client.zadd(keys.versions, {version: time.time()})
        client.zrem(keys.pending, version)
        expired = _expire_old(client, keys, version, config)
    except redis.RedisError as e:
        raise StoreError(
            f"publishing {version} failed ({e}); the active version is unchanged"
        ) from None
    return {
        "users": len(user_ids),
        "items_written": int(lengths.sum()),
        "seconds": time.perf_counter() - started,
        "expired_versions": len(expired),
    }


def _list_commands(name: str, frags: np.ndarray, n: int, ttl: bytes) -> list[bytes]:
    """One user's list replaced: DEL, ZADD of its ``n`` (score, item) fragments, EXPIRE."""
    key = _bulk(name.encode())
    if not n:
        return [b"*2\r\n$3\r\nDEL\r\n" + key]
    return [  # GT: a repeated id keeps its first (highest) place
        b"*2\r\n$3\r\nDEL\r\n" + key,
        b"*%d\r\n$4\r\nZADD\r\n%s$2\r\nGT\r\n%s" % (3 + 2 * n, key, b"".join(frags[: 2 * n])),
        b"*3\r\n$6\r\nEXPIRE\r\n%s%s" % (key, _bulk(ttl)),
    ]


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _transactions(sends: list[tuple[redis.Redis, list[list[bytes]]]]) -> None:
    """Send blocks of pre-packed commands, each as one MULTI/EXEC, to each server (all
    servers first, so that they work at once, then every reply); raise on any error."""
    multi, exec_ = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"
    taken = [
        (client.connection_pool, client.connection_pool.get_connection()) for client, _ in sends
    ]
    errors: list[Exception | None] = []
    try:
        for (_, conn), (_, blocks) in zip(taken, sends, strict=True):
            conn.send_packed_command([part for b in blocks for part in (multi, *b, exec_)])
        for (_, conn), (_, blocks) in zip(taken, sends, strict=True):
            for block in blocks:
                for _ in range(len(block) + 1):  # +OK, then +QUEUED per command
                    conn.read_response()
                results = conn.read_response()
                errors += [r for r in results if isinstance(r, Exception)] if results else [None]
    except BaseException:
        for _, conn in taken:
            conn.disconnect()  # a half-read reply stream must not go back to the pool
        raise
    finally:
        for pool, conn in taken:
            pool.release(conn)
    if errors:
        raise redis.ResponseError(f"transaction failed: {errors[0] or 'aborted'}")


def _check_complete(
    client: Client, keys: Keys, version: str, user_ids: Sequence[str], lengths: np.ndarray
) -> None:
    """Count a sample of the written lists (all of them for small publishes) before the flip."""
    sample = (
        np.arange(len(user_ids))
        if len(user_ids) <= 2000
        else np.linspace(0, len(user_ids) - 1, 2000).astype(int)
    )
    pipe = client.pipeline(transaction=False)
    for i in sample:
        pipe.zcard(keys.recall(version, user_ids[i]))
    pipe.exists(keys.meta(version))
    *counts, meta = pipe.execute()
    if not meta or any(int(c) != int(lengths[i]) for c, i in zip(counts, sample, strict=True)):
        raise StoreError(
            f"version {version} is incomplete in Redis after writing; not activating it"
        )


def _persist(client: Client, keys: Keys, version: str, user_ids: Sequence[str], batch: int) -> None:
    """Lift the publish-time expiry of every key of ``version`` (before the flip).

    The keys are known, so no SCAN over the whole keyspace: PERSIST of a user without a
    list (no key) is a no-op.
    """
    pipe = client.pipeline(transaction=False)
    pipe.persist(keys.global_hot(version))
    pipe.persist(keys.meta(version))
    for i, uid in enumerate(user_ids):
        pipe.persist(keys.recall(version, uid))
        if i % (10 * batch) == 10 * batch - 1:
            pipe.execute()
    pipe.execute()


def _expire_version(client: Client, keys: Keys, version: str, seconds: int) -> None:
    pipe = client.pipeline(transaction=False)
    for key in client.scan_iter(match=keys.version_pattern(version), count=1000):
        pipe.expire(key, seconds)
    pipe.zrem(keys.versions, version)
    pipe.zrem(keys.pending, version)
    pipe.execute()


def _expire_abandoned(client: Client, keys: Keys, current: str, config: PublishConfig) -> None:
    """Versions a publish registered but never activated: their keys expire now.

    A publish beats ``pending`` with every batch; one whose last beat is older than
    ``abandoned_after_s`` is taken for dead (one still running elsewhere is left alone).
    """
    active = _text(client.get(keys.active))
    cutoff = time.time() - config.abandoned_after_s
    for raw, beat in client.zrange(keys.pending, 0, -1, withscores=True):
        version = _text(raw)
        if version == active:
            client.zrem(keys.pending, version)
        elif version != current and beat < cutoff:
            log.warning("expiring the keys of %s, a publish that never completed", version)
            _expire_version(client, keys, version, config.expire_after_s)


def _expire_old(client: Client, keys: Keys, current: str, config: PublishConfig) -> list[str]:
    versions = [_text(v) for v in client.zrevrange(keys.versions, 0, -1)]
    old = [v for v in versions if v != current][config.keep_versions - 1 :]
    for version in old:
        _expire_version(client, keys, version, config.expire_after_s)
    return old


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
