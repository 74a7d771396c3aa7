"""Publish a version to Redis: every key first, then the ``active`` flip, then clean-up.

1. The version is registered in ``pending`` before any of its keys is written, and
   every key is written with an expiry (``pending_ttl_s``); a publish that dies
   part-way leaves keys that expire on their own, and the next publish expires what a
   dead one left at once.
2. Writes go in pipelined batches (no round trip per key), each user's list replaced
   by one ``RESTORE … REPLACE`` of a payload built here (:mod:`offline.dump`): one atomic
   command per key, so a reader never sees a list half-written and nothing spans two
   hash slots; each batch goes to the server holding its keys, on a Redis Cluster
   (``shared.store``) every node over its own connection at once. Where every server
   keeps lists of this length as listpacks (``zset-max-listpack-entries`` ≥ the list
   length), the payloads are listpacks, which the server stores without parsing.
3. Only when every key of the version is written and counted are the expiries lifted,
   then ``active`` moves to it in one SET; until then the active version is as it was.
4. Versions older than the newest ``keep`` get a short expiry (readers still holding
   one finish their request).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence

import numpy as np
import redis
from pydantic import Field
from tqdm import tqdm

from offline.dump import SortedSets, listpack_fits
from shared.config import StrictConfig
from shared.errors import StoreError
from shared.keys import Keys
from shared.store import Client, by_node, node_client, primaries

__all__ = ["PublishConfig", "publish"]

log = logging.getLogger(__name__)


class PublishConfig(StrictConfig):
    batch_size: int = Field(
        100,
        ge=1,
        description="users per pipelined batch (one RESTORE per user's list, sent "
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
) -> dict[str, float | str]:
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
    recall = recall.reshape(len(user_ids), k)
    keep = _first_places(recall)
    names = [str(name).encode() for name in item_ids]
    ttl_ms = config.pending_ttl_s * 1000
    try:
        listpack = _keeps_listpacks(client, k, max(map(len, names), default=0))
        sets = SortedSets(names, np.arange(k, 0, -1.0), listpack)  # higher score = earlier
        _expire_abandoned(client, keys, version, config)
        beat = 0.0
        batches = range(0, len(user_ids), config.batch_size)
        with _Sender() as sender:
            for lo in tqdm(batches, disable=not progress, desc="publish", unit="batch"):
                hi = min(lo + config.batch_size, len(user_ids))
                if time.monotonic() - beat > 1:  # this publish is alive
                    client.zadd(keys.pending, {version: time.time()})
                    beat = time.monotonic()
                lists = [keys.recall(version, uid).encode() for uid in user_ids[lo:hi]]
                payloads = sets.payloads(np.maximum(recall[lo:hi], 0), keep[lo:hi])
                sender.send([
                    (node, [_write(lists[i], ttl_ms, payloads[i]) for i in at])
                    for node, at in by_node(client, lists)
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
        _check_complete(client, keys, version, user_ids, keep.sum(axis=1))
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
        "items_written": int(keep.sum()),
        "seconds": time.perf_counter() - started,
        "expired_versions": len(expired),
        "encoding": "listpack" if listpack else "zset2",
    }


def _first_places(recall: np.ndarray) -> np.ndarray:
    """(U, K) which entries of each list are written: item rows > 0, a repeated one only
    at its first (highest) place."""
    keep = recall > 0
    ordered = np.sort(recall, axis=1)
    repeats = ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] > 0)).any(axis=1)
    if repeats.any():  # the lists with a repeat: their first places, by a stable sort
        rows = recall[repeats]
        order = np.argsort(rows, axis=1, kind="stable")
        ordered = np.take_along_axis(rows, order, axis=1)
        first = np.ones_like(ordered, dtype=bool)
        first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        kept = np.empty_like(first)
        np.put_along_axis(kept, order, first & (ordered > 0), axis=1)
        keep[repeats] = kept
    return keep


def _keeps_listpacks(client: Client, k: int, longest: int) -> bool:
    """Whether every server keeps a list of ``k`` members of up to ``longest`` bytes as a
    listpack (its ``zset-max-listpack-*``); False where CONFIG is refused or unknown."""
    if not listpack_fits(k, longest):
        return False
    for node in primaries(client):
        try:
            limits = node.config_get("zset-max-listpack-*")
        except redis.ResponseError:
            return False
        entries = int(limits.get("zset-max-listpack-entries", 0))
        if entries < k or int(limits.get("zset-max-listpack-value", 0)) < longest:
            return False
    return True


def _write(key: bytes, ttl_ms: int, payload: bytes | None) -> bytes:
    """One user's list replaced by one command (an empty list: no key)."""
    if payload is None:
        return _command(b"DEL", key)
    return _command(b"RESTORE", key, b"%d" % ttl_ms, payload, b"REPLACE")


def _command(*parts: bytes) -> bytes:
    """A command packed for the wire (redis-py's packer costs more than the payloads)."""
    return b"*%d\r\n" % len(parts) + b"".join([b"$%d\r\n%s\r\n" % (len(p), p) for p in parts])


class _Sender:
    """Pre-packed commands to the servers, over one connection each, with one batch in
    flight: a batch's replies are read only after the next batch is sent, so that the
    servers take one batch while this process packs the next.

    Used as a context manager: leaving it reads every reply and hands the connections
    back. A refused command raises once its batch is read; on any error, a connection
    with replies still unread is closed.
    """

    def __init__(self) -> None:
        self.taken: dict[int, tuple[redis.Redis, redis.Connection]] = {}
        self.unread: deque[list[tuple[redis.Connection, int]]] = deque()
        self.errors: list[redis.ResponseError] = []

    def send(self, sends: list[tuple[redis.Redis, list[bytes]]]) -> None:
        """One batch: ``(server, commands)`` each; every server's share goes out at once."""
        batch = []
        for client, commands in sends:
            if id(client) not in self.taken:
                self.taken[id(client)] = (client, client.connection_pool.get_connection())
            conn = self.taken[id(client)][1]
            conn.send_packed_command([b"".join(commands)])  # one write, not one per command
            batch.append((conn, len(commands)))
        self.unread.append(batch)
        while len(self.unread) > 1:
            self._read()

    def _read(self) -> None:
        for conn, n in self.unread.popleft():
            for _ in range(n):
                try:
                    conn.read_response()
                except redis.ResponseError as e:
                    self.errors.append(e)
        if self.errors:  # every reply of the batch read: the stream is consistent
            raise redis.ResponseError(f"a write to Redis was refused: {self.errors[0]}")

    def __enter__(self) -> _Sender:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            while kind is None and self.unread:
                self._read()
        finally:
            for client, conn in self.taken.values():
                if self.unread or kind is not None:
                    conn.disconnect()  # a half-read reply stream must not go back to the pool
                client.connection_pool.release(conn)


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
    for key in (keys.global_hot(version), keys.meta(version)):
        node_client(client, key).persist(key)
    with _Sender() as sender:
        for lo in range(0, len(user_ids), 10 * batch):
            lists = [keys.recall(version, uid).encode() for uid in user_ids[lo : lo + 10 * batch]]
            sender.send([
                (node, [_command(b"PERSIST", lists[i]) for i in at])
                for node, at in by_node(client, lists)
            ])  # fmt: skip


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
