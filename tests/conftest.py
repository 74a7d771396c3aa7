"""Shared fixtures: a real Redis server on a free port, data paths, small bundles."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from shared.errors import DataError
from shared.redis_server import LocalCluster, RedisServer

REPO = Path(__file__).resolve().parents[1]
ML100K = REPO.parent / "shared" / "data" / "ml-100k"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server process for the whole session."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A real three-master Redis Cluster on loopback ports for the whole session."""
    with LocalCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on a freshly flushed database."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at {ML100K} (the shared data folder is absent)")
    return ML100K


def raises_data_error(call: Callable[[], object], path: Path, line: int | None) -> DataError:
    """Run ``call``; its DataError must name ``path`` and ``line`` on one line."""
    with pytest.raises(DataError) as info:
        call()
    e = info.value
    assert e.path == str(path)
    assert e.line == line
    assert str(e).startswith(f"{path}:{line}: " if line is not None else f"{path}: ")
    assert "\n" not in str(e)
    return e
