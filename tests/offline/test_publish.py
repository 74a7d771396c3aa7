import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from offline.publish import PublishConfig, publish
from shared.errors import StoreError
from shared.keys import Keys
from shared.redis_server import RedisServer
from shared.store import Client, connect, primaries
from tests.conftest import REPO

KEYS = Keys("t:")
N_ITEMS = 500


def _lists(n_users: int, k: int = 20, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    recall = np.stack([rng.permutation(N_ITEMS)[:k] + 1 for _ in range(n_users)])
    item_ids = np.array([""] + [f"i{i}" for i in range(1, N_ITEMS + 1)], dtype=object)
    return [f"u{u}" for u in range(n_users)], recall, item_ids


def _publish(client: redis.Redis, version: str, n_users: int = 50, **config) -> dict:
    users, recall, item_ids = _lists(n_users)
    return publish(client, KEYS, version, users, recall, item_ids, np.arange(1, 11), np.linspace(1, 0, 10),
                   {"dataset": "test"}, PublishConfig(**config))  # fmt: skip


@pytest.fixture(params=["server", "cluster"])
def store(request, redis_server, redis_cluster) -> Iterator[tuple[Client, str, bool]]:
    """(a flushed client, its URL, whether a cluster): one server, or the 3-master cluster."""
    cluster = request.param == "cluster"
    url = (redis_cluster if cluster else redis_server).url
    client = connect(url, cluster)
    client.flushdb()  # on a cluster: every primary
    yield client, url, cluster
    client.close()


def test_publish_writes_the_layout_then_flips(store) -> None:
    redis_client, _, cluster = store
    users, recall, item_ids = _lists(50)
    _publish(redis_client, "v1")
    assert redis_client.get(KEYS.active) == b"v1"
    got = [m.decode() for m in redis_client.zrevrange(KEYS.recall("v1", "u7"), 0, -1)]
    assert got == list(item_ids[recall[7]])  # higher score = earlier
    assert redis_client.zcard(KEYS.global_hot("v1")) == 10
    assert redis_client.hget(KEYS.meta("v1"), "dataset") == b"test"
    if cluster:  # the lists spread over every primary, each written over its own connection
        per_node = [len(_version_keys(node, "v1")) for node in primaries(redis_client)]
        assert len(per_node) == 3 and min(per_node) > 5 and sum(per_node) == 50 + 2


def _version_keys(node: redis.Redis, version: str) -> list[bytes]:
    return list(node.scan_iter(match=KEYS.version_pattern(version), count=1000))


def test_republishing_a_version_is_harmless(store) -> None:
    redis_client = store[0]
    _publish(redis_client, "v1")
    before = redis_client.zrange(KEYS.recall("v1", "u3"), 0, -1, withscores=True)
    _publish(redis_client, "v1")
    assert redis_client.zrange(KEYS.recall("v1", "u3"), 0, -1, withscores=True) == before
    assert redis_client.get(KEYS.active) == b"v1"


def test_only_the_last_two_versions_are_kept(store) -> None:
    redis_client = store[0]
    for v in ("v1", "v2", "v3"):
        _publish(redis_client, v, n_users=5)
    assert redis_client.get(KEYS.active) == b"v3"
    assert {m.decode() for m in redis_client.zrange(KEYS.versions, 0, -1)} == {"v2", "v3"}
    assert (
        0 < redis_client.ttl(KEYS.recall("v1", "u0")) <= 60
    )  # expiring, not yet gone for late readers
    assert redis_client.ttl(KEYS.meta("v1")) > 0
    assert (
        redis_client.ttl(KEYS.recall("v2", "u0")) == -1
        and redis_client.ttl(KEYS.recall("v3", "u0")) == -1
    )
    for node in primaries(redis_client):  # the clean-up reached every node
        assert all(0 < node.ttl(key) <= 60 for key in _version_keys(node, "v1"))


def test_a_reader_never_sees_a_half_written_active_version(store) -> None:
    redis_client, url, cluster = store
    _publish(redis_client, "old", n_users=300)
    problems: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        r = connect(url, cluster)
        while not stop.is_set():
            version = r.get(KEYS.active).decode()
            pipe = r.pipeline(transaction=False)
            pipe.exists(KEYS.meta(version))
            for u in (0, 150, 299):
                pipe.zcard(KEYS.recall(version, f"u{u}"))
            meta, *cards = pipe.execute()
            if not meta or min(cards) == 0:
                problems.append(f"{version}: meta={meta} cards={cards}")
        r.close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        _publish(redis_client, "new", n_users=300, batch_size=10)
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert redis_client.get(KEYS.active) == b"new"


def test_a_publish_killed_part_way_leaves_the_old_version_active(
    redis_client: redis.Redis, redis_server
) -> None:
    _publish(redis_client, "old", n_users=20)
    script = f"""
import numpy as np, redis
from offline.publish import PublishConfig, publish
from shared.keys import Keys
c = redis.Redis.from_url({redis_server.url!r})
users = [f"u{{u}}" for u in range(200_000)]
recall = np.tile(np.arange(1, 101), (len(users), 1))
ids = np.array([""] + [f"i{{i}}" for i in range(1, 101)], dtype=object)
print("start", flush=True)
publish(c, Keys("t:"), "doomed", users, recall, ids, np.arange(1, 3), np.ones(2), {{}}, PublishConfig(batch_size=50))
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "start"
    deadline = time.monotonic() + 30
    while not redis_client.exists(KEYS.recall("doomed", "u0")):  # wait until it is really writing
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    assert redis_client.get(KEYS.active) == b"old"
    assert redis_client.zcard(KEYS.recall("old", "u5")) == 20
    # what it left is registered as pending and expires on its own
    assert redis_client.zscore(KEYS.pending, "doomed") is not None
    doomed = list(redis_client.scan_iter(match=KEYS.version_pattern("doomed"), count=1000))
    assert doomed and all(redis_client.ttl(k) > 0 for k in doomed)

    time.sleep(0.3)  # longer than abandoned_after_s below: the dead publish is silent
    _publish(redis_client, "next", n_users=20, abandoned_after_s=0.2)
    assert redis_client.get(KEYS.active) == b"next"
    assert redis_client.zcard(KEYS.pending) == 0
    kept = {v.decode() for v in redis_client.zrange(KEYS.versions, 0, -1)}
    assert kept == {"old", "next"}  # the active one and the one kept for a roll-back
    for key in redis_client.scan_iter(match="t:v:*", count=1000):
        if key.decode().split(":")[2] not in kept:  # no key of another version lives forever
            assert redis_client.ttl(key) > 0, key
    assert all(0 < redis_client.ttl(k) <= 60 for k in doomed[:100] if redis_client.exists(k))
    assert all(
        redis_client.ttl(k) == -1
        for k in redis_client.scan_iter(match=KEYS.version_pattern("next"), count=1000)
    )


def test_version_ids_are_matched_literally(redis_client: redis.Redis) -> None:
    for v in ("v1", "v[1]", "v*", "v2", "v3"):
        _publish(redis_client, v, n_users=3)
    # "v[1]" and "v*" are expired as old versions; as glob patterns they would match "v1"
    # and every version
    assert redis_client.ttl(KEYS.recall("v[1]", "u0")) > 0
    assert redis_client.ttl(KEYS.recall("v*", "u0")) > 0
    assert redis_client.ttl(KEYS.recall("v2", "u0")) == -1
    assert redis_client.ttl(KEYS.recall("v3", "u0")) == -1


def test_redis_gone_is_a_store_error_and_changes_nothing() -> None:
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url, socket_timeout=1)
    _publish(client, "old", n_users=5)
    server.stop()
    with pytest.raises(StoreError, match="active version is unchanged"):
        _publish(client, "new", n_users=5)
    server.start()
    assert (
        client.get(KEYS.active) is None
    )  # a fresh server (no persistence): nothing half-set either
    client.close()
    server.stop()


def test_a_repeated_item_keeps_its_first_place_and_an_empty_list_no_key(store) -> None:
    client = store[0]
    item_ids = np.array(["", "a", "b", "c", "d"], dtype=object)
    recall = np.array([[3, 1, 3, 0, 4, 1], [0, 0, 0, 0, 0, 0], [2, 2, 2, 2, 2, 2]])
    stats = publish(client, KEYS, "v1", ["x", "y", "z"], recall, item_ids, np.array([1]),
                    np.array([1.0]), {}, PublishConfig())  # fmt: skip
    assert client.zrevrange(KEYS.recall("v1", "x"), 0, -1, withscores=True) == [
        (b"c", 6.0), (b"a", 5.0), (b"d", 2.0)
    ]  # fmt: skip
    assert not client.exists(KEYS.recall("v1", "y"))
    assert client.zrevrange(KEYS.recall("v1", "z"), 0, -1) == [b"b"]
    assert stats["items_written"] == 4


def test_lists_are_listpacks_where_the_server_keeps_them_so(redis_client: redis.Redis) -> None:
    if int(redis_client.info("server")["redis_version"].split(".")[0]) < 7:
        pytest.skip("listpack sorted sets need Redis 7.0 (the tests' server is older)")
    assert _publish(redis_client, "v1")["encoding"] == "listpack"  # lists of 20 ≤ 128
    assert redis_client.object("encoding", KEYS.recall("v1", "u7")) == b"listpack"
    redis_client.config_set("zset-max-listpack-entries", 10)  # now too long for one
    try:
        assert _publish(redis_client, "v2")["encoding"] == "zset2"
    finally:
        redis_client.config_set("zset-max-listpack-entries", 128)
    assert redis_client.object("encoding", KEYS.recall("v2", "u7")) == b"skiplist"
    assert redis_client.zrange(KEYS.recall("v2", "u7"), 0, -1, withscores=True) == (
        redis_client.zrange(KEYS.recall("v1", "u7"), 0, -1, withscores=True)
    )


def test_a_refused_write_is_a_store_error_and_the_old_version_stays(
    redis_client: redis.Redis, redis_server
) -> None:
    _publish(redis_client, "old", n_users=20)
    redis_client.acl_setuser("norestore", enabled=True, passwords=["+pw"], keys=["*"],
                             commands=["+@all", "-restore"])  # fmt: skip
    limited = redis.Redis(port=redis_server.port, username="norestore", password="pw")
    try:
        with pytest.raises(StoreError, match="refused: .*restore"):
            _publish(limited, "new", n_users=20, batch_size=3)
        assert limited.get(KEYS.active) == b"old"  # the pool's connections still answer
    finally:
        limited.close()
        redis_client.acl_deluser("norestore")
