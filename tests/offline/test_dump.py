from collections.abc import Iterator

import numpy as np
import pytest
import redis

from offline.dump import SortedSets


@pytest.fixture
def strict(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    """The server checking every payload's structure deeply (order, duplicates, sizes)."""
    redis_client.config_set("sanitize-dump-payload", "yes")
    yield redis_client
    redis_client.config_set("sanitize-dump-payload", "no")


@pytest.mark.parametrize("listpack", [True, False])
@pytest.mark.parametrize(
    "members",
    [
        [b"i%d" % i for i in range(300)],
        [b"%d" % i for i in range(300)],  # numeric ids stay strings
        [b"x" * n for n in range(1, 300)],  # long members: two-byte lengths and backlens
    ],
    ids=["ids", "numeric", "long"],
)
def test_a_restored_payload_is_the_set_it_encodes(strict, members, listpack) -> None:
    if listpack and _major(strict) < 7:
        pytest.skip("listpack sorted sets need Redis 7.0 (the tests' server is older)")
    k = 200
    scores = np.arange(k, 0, -1.0)
    sets = SortedSets(members, scores, listpack)
    rng = np.random.default_rng(0)
    rows = np.stack([rng.permutation(len(members))[:k] for _ in range(3)])
    keep = np.ones_like(rows, dtype=bool)
    keep[1, 150:] = False  # a shorter set
    keep[2, 1::2] = False  # holes: the ranks keep their scores
    payloads = sets.payloads(rows, keep)
    if listpack:  # a server that keeps such sets as listpacks (zset2: the default 128)
        strict.config_set("zset-max-listpack-entries", 256)
        strict.config_set("zset-max-listpack-value", 512)
    try:
        for i, payload in enumerate(payloads):
            key = b"set%d" % i
            strict.execute_command("RESTORE", key, 0, payload, "REPLACE")
            expected = [
                (members[r], float(s))
                for r, s, kept in zip(rows[i], scores, keep[i], strict=True)
                if kept
            ]
            assert strict.zrevrange(key, 0, -1, withscores=True) == expected
            assert strict.zscore(key, members[rows[i, 0]]) == k
            small = len(expected) <= 128 and max(len(m) for m, _ in expected) <= 64
            compact = b"listpack" if _major(strict) >= 7 else b"ziplist"
            kept_as = compact if listpack or small else b"skiplist"
            assert strict.object("encoding", key) == kept_as  # zset2: the server's choice
    finally:
        if listpack:
            strict.config_set("zset-max-listpack-entries", 128)
            strict.config_set("zset-max-listpack-value", 64)


def _major(client: redis.Redis) -> int:
    return int(client.info("server")["redis_version"].split(".")[0])


def test_an_empty_set_has_no_payload() -> None:
    sets = SortedSets([b"a", b"b"], [2.0, 1.0], listpack=True)
    assert sets.payloads(np.array([[0, 1]]), np.array([[False, False]])) == [None]


def test_a_damaged_payload_is_refused(redis_client: redis.Redis) -> None:
    payload = SortedSets([b"a", b"b"], [2.0, 1.0], listpack=False).payloads(
        np.array([[0, 1]]), np.ones((1, 2), dtype=bool)
    )[0]
    damaged = payload[:-9] + bytes([payload[-9] ^ 1]) + payload[-8:]
    with pytest.raises(redis.ResponseError, match="checksum"):
        redis_client.execute_command("RESTORE", "bad", 0, damaged)
