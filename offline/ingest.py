"""``python -m offline ingest``: the gateway's event stream into day-partitioned Parquet.

Reads ``{prefix}events`` (written by ``POST /events``) as one consumer of the group
``ingest`` (created at the stream's start when missing): first the entries this consumer
read before and never acknowledged (it stopped between read and ack), then new ones.
Each batch becomes ``{dir}/date=YYYY-MM-DD/part-{first id}-{last id}.parquet``, one file
per arrival day (the stream id's time), each renamed into place whole
(:func:`shared.bundle.atomic_path`), and is acknowledged after its files are in place.

Exactly once across any stop (one ingest per folder, held by a lock; events the stream
trimmed at ``RECSYS_EVENTS_STREAM_MAX`` before ingest read them are gone): an entry at or below the highest stream id already in a
file name is acknowledged without being written again (ids grow, batches are written in
the order they are read, and a batch's days in id order), so an entry is in the files
once whether the stop came before the write, between two days' files or before the ack.
"""

from __future__ import annotations

import bisect
import fcntl
import itertools
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import redis

from shared.bundle import atomic_path
from shared.errors import StoreError
from shared.keys import Keys
from shared.store import Client, node_client

__all__ = ["EVENT_SCHEMA", "GROUP", "Ingestor", "read_events"]

GROUP = "ingest"
EVENT_SCHEMA = {
    "event_id": pl.String, "uid": pl.String, "item_id": pl.String, "type": pl.String,
    "ts": pl.Float64, "request_id": pl.String,
    "context": pl.Struct(
        {"page": pl.String, "position": pl.Int64, "device": pl.String, "anchor": pl.String}
    ),
}  # fmt: skip
_PART = re.compile(r"^part-(\d+)-(\d+)-(\d+)-(\d+)\.parquet$")

StreamId = tuple[int, int]
_DAY_MS = 86_400_000


def _id(raw: bytes) -> StreamId:
    ms, seq = raw.split(b"-")
    return int(ms), int(seq)


@dataclass(frozen=True)
class Batch:
    ids: list[bytes]  # every stream id read, ascending (all acknowledged)
    entries: list[tuple[bytes, bytes]]  # (stream id, JSON event) of those still in the stream


class Ingestor:
    """One consumer of the ``ingest`` group writing Parquet parts under ``folder``.

    Args:
        client (redis.Redis | RedisCluster): the gateway's Redis (bytes replies).
        folder (Path): the event log's root.
        consumer (str): this consumer's name; a restarted ingest takes over its entries.
        key_prefix (str): the Redis key prefix.
    """

    def __init__(
        self,
        client: Client,
        folder: Path,
        consumer: str = "ingest-1",
        key_prefix: str = "recsys:",
    ) -> None:
        self.client = client
        self.stream = Keys(key_prefix).events
        # the same connections (the stream's node's), but stream replies left as hiredis
        # parsed them: redis-py's XREADGROUP callback builds a dict per entry (a third of
        # ingest's time)
        self._raw = redis.Redis(connection_pool=node_client(client, self.stream).connection_pool)
        self._raw.set_response_callback("XREADGROUP", lambda response, **_: response)
        self.folder = Path(folder)
        self.consumer = consumer
        self.folder.mkdir(parents=True, exist_ok=True)
        # one ingest per folder: the exactly-once rule reads what the others wrote
        self._lock = (self.folder / ".ingest.lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreError(f"{self.folder}: another ingest is writing here") from None
        self.written = max((p[1] for p in _parts(self.folder)), default=(0, 0))
        self._pending_done = False
        try:
            client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def read(self, count: int, block_ms: int | None = None) -> Batch:
        """The next entries: this consumer's unacknowledged ones first, then new ones."""
        if not self._pending_done:
            entries = self._xreadgroup("0", count, None)
            if entries:
                return _batch(entries)
            self._pending_done = True
        return _batch(self._xreadgroup(">", count, block_ms))

    def _xreadgroup(self, start: str, count: int, block_ms: int | None) -> list:
        """``[[id, [field, value, …]], …]`` of the stream from ``start`` (raw replies)."""
        block = ["BLOCK", block_ms] if block_ms is not None else []
        got = self._raw.execute_command(
            "XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", count, *block,
            "STREAMS", self.stream, start,
        )  # fmt: skip
        if not got:
            return []
        # RESP3 (and redis-py's hiredis parsing): {stream: entries}; RESP2: [[stream, entries]]
        return next(iter(got.values())) if isinstance(got, dict) else got[0][1]

    def write(self, batch: Batch) -> int:
        """Write the entries of ``batch`` not already in a file; how many were written."""
        ids = [_id(i) for i, _ in batch.entries]  # ascending
        start = bisect.bisect_right(ids, self.written)  # those at or below it are written
        entries, ids = batch.entries[start:], ids[start:]
        at = 0
        for day, group in itertools.groupby(ids, key=lambda i: i[0] // _DAY_MS):
            n = sum(1 for _ in group)
            part, first, last = entries[at : at + n], ids[at], ids[at + n - 1]
            at += n
            frame = pl.read_ndjson(b"\n".join(p for _, p in part), schema=EVENT_SCHEMA)
            frame = frame.with_columns(
                stream_id=pl.Series([i.decode() for i, _ in part], dtype=pl.String)
            )
            date = datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")
            folder = self.folder / f"date={date}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"part-{first[0]}-{first[1]}-{last[0]}-{last[1]}.parquet"
            with atomic_path(path) as tmp:
                frame.write_parquet(tmp)
                with tmp.open("rb") as f:  # on disk before the ack, not only in the page cache
                    os.fsync(f.fileno())
            self.written = last
        return len(entries)

    def close(self) -> None:
        """Let go of the folder (a stopped process does so by itself)."""
        self._lock.close()

    def __enter__(self) -> Ingestor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ack(self, batch: Batch) -> None:
        if batch.ids:
            self.client.xack(self.stream, GROUP, *batch.ids)

    def run(self, count: int = 10_000, follow: bool = False) -> Iterator[tuple[int, int, float]]:
        """Read, write and acknowledge until the stream is drained (``follow``: forever);
        yields ``(read, written, seconds)`` per batch."""
        while True:
            started = time.perf_counter()
            batch = self.read(count, block_ms=1000 if follow else None)
            if not batch.ids:
                if follow:
                    continue
                return
            written = self.write(batch)
            self.ack(batch)
            yield len(batch.ids), written, time.perf_counter() - started


def _batch(read: list) -> Batch:
    # an entry trimmed by MAXLEN while pending comes back without fields: acknowledged only
    return Batch([i for i, _ in read], [(i, _field(f, b"e")) for i, f in read if f])


def _field(fields: list, name: bytes) -> bytes:
    """A field's value in a raw stream entry ``[field, value, …]`` (the gateway writes
    one field)."""
    return fields[1] if fields[0] == name else fields[fields.index(name) + 1]


def _parts(folder: Path) -> Iterator[tuple[StreamId, StreamId]]:
    for path in folder.glob("date=*/part-*.parquet"):
        if match := _PART.match(path.name):
            a, b, c, d = map(int, match.groups())
            yield (a, b), (c, d)


def read_events(folder: Path) -> pl.DataFrame:
    """Every event written under ``folder`` (``EVENT_SCHEMA`` plus ``stream_id``), in
    stream order."""
    paths = sorted(Path(folder).glob("date=*/part-*.parquet"))
    if not paths:
        return pl.DataFrame(schema=EVENT_SCHEMA | {"stream_id": pl.String})
    parts = pl.concat([pl.read_parquet(p) for p in paths])
    order = parts["stream_id"].str.split_exact("-", 1).struct.unnest().cast(pl.Int64)
    return parts.with_columns(order).sort("field_0", "field_1").drop("field_0", "field_1")
