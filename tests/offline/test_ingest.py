"""``offline ingest``: the event stream into Parquet exactly once, whatever stops it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import polars as pl
import pytest
import redis

from offline.cli import main
from offline.ingest import GROUP, Ingestor, read_events
from shared.errors import StoreError
from shared.keys import Keys
from shared.store import Client, connect

STREAM = Keys().events


def _post(client: redis.Redis, first: int, n: int) -> None:
    """Entries as the gateway's script writes them."""
    pipe = client.pipeline()
    for i in range(first, first + n):
        event = {"event_id": f"e{i}", "uid": f"u{i % 7}", "item_id": f"i{i % 11}",
                 "type": "click" if i % 3 else "impression", "ts": 1_700_000_000.0 + i,
                 "context": {"page": "home", "position": i % 10}}  # fmt: skip
        pipe.xadd(STREAM, {"e": orjson.dumps(event)})
    pipe.execute()


def _ids(folder: Path) -> list[str]:
    return read_events(folder)["event_id"].to_list()


@pytest.fixture
def client(redis_client: redis.Redis) -> redis.Redis:
    redis_client.delete(STREAM)
    return redis_client


@pytest.fixture(params=["server", "cluster"])
def any_client(request, client: redis.Redis, redis_cluster) -> Iterator[Client]:
    """The test server's client, or one of the 3-master cluster's (the stream on one node)."""
    if request.param == "server":
        yield client
        return
    on_cluster = connect(redis_cluster.url, cluster=True)
    on_cluster.delete(STREAM)
    yield on_cluster
    on_cluster.delete(STREAM)
    on_cluster.close()


def test_every_event_lands_once_in_a_day_partition(any_client: Client, tmp_path: Path) -> None:
    client = any_client
    _post(client, 0, 250)
    ingestor = Ingestor(client, tmp_path)
    assert [(n, w) for n, w, _ in ingestor.run(count=100)] == [(100, 100), (100, 100), (50, 50)]
    events = read_events(tmp_path)
    assert events["event_id"].to_list() == [f"e{i}" for i in range(250)]
    assert events["context"].struct.field("position").to_list()[:3] == [0, 1, 2]
    assert [p.parent.name[:5] for p in tmp_path.glob("*/*.parquet")] == ["date="] * 3
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    with pytest.raises(StoreError, match="another ingest is writing here"):
        Ingestor(client, tmp_path)  # one at a time: the rule reads what the other wrote
    ingestor.close()
    _post(client, 250, 10)  # the next run takes only what is new
    with Ingestor(client, tmp_path) as again:
        assert sum(w for _, w, _ in again.run()) == 10
    assert _ids(tmp_path) == [f"e{i}" for i in range(260)]


def test_a_stop_between_read_and_ack_loses_and_repeats_nothing(
    client: redis.Redis, tmp_path: Path
) -> None:
    _post(client, 0, 300)
    first = Ingestor(client, tmp_path)
    done = first.read(100)
    first.write(done)
    first.ack(done)
    first.write(first.read(100))  # stops after writing, before the ack
    first.close()  # (a process that stops lets go of the folder's lock)
    assert client.xpending(STREAM, GROUP)["pending"] == 100
    second = Ingestor(client, tmp_path)  # the restarted consumer: its pending entries first
    pending = second.read(100)
    assert second.write(pending) == 0  # already in a file: acknowledged, not written again
    second.ack(pending)
    assert len(second.read(100).ids) == 100  # stops after reading: nothing written
    second.close()
    with Ingestor(client, tmp_path) as third:
        assert sum(w for _, w, _ in third.run(count=64)) == 100
    assert _ids(tmp_path) == [f"e{i}" for i in range(300)]
    assert client.xpending(STREAM, GROUP)["pending"] == 0


def test_the_command_line_drains_the_stream(
    client: redis.Redis, redis_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _post(client, 0, 30)
    url = f"{redis_server.url.rsplit('/', 1)[0]}/{client.connection_pool.connection_kwargs['db']}"
    assert main(["ingest", "--redis-url", url, "--events-dir", str(tmp_path)]) == 0
    assert "30 events read, 30 written" in capsys.readouterr().out
    assert pl.read_parquet(next(tmp_path.glob("*/*.parquet"))).height == 30
