"""The stack on a real three-master Redis Cluster (``RECSYS_REDIS_CLUSTER=true``): the
worker publishes over every node, the gateway answers as it does from one server, and
the feedback loop's scripts run (their keys share one hash slot)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from shared.keys import Keys
from shared.redis_server import LocalCluster
from tests.services.conftest import BuiltBundle
from tests.services.gateway.conftest import MakeGateway, wait_for

KEYS = Keys()


@pytest.fixture(scope="module")
def published(redis_cluster: LocalCluster, built: BuiltBundle) -> Iterator[LocalCluster]:
    built.publish(redis_cluster.url, cluster=True)
    yield redis_cluster
    for node in redis_cluster.nodes:
        client = redis.Redis(port=node.port)
        client.flushall()
        client.close()


def test_the_gateway_answers_from_a_cluster_as_from_one_server(
    make_gateway: MakeGateway, published: LocalCluster, store_url: str, built: BuiltBundle
) -> None:
    on_cluster = make_gateway(published.url, redis_cluster=True)
    single = make_gateway(store_url)
    health = on_cluster.get("/health").json()
    assert health["status"] == "ok" and health["dependencies"]["redis"] == "ok"
    assert health["version"] == built.version
    for uid in [*built.users()["user_id"].to_list()[:4], "nobody-knows-me"]:
        for path in (f"/recall/{uid}", f"/recommend/{uid}"):
            got, want = on_cluster.get(path).json(), single.get(path).json()
            assert got["items"] == want["items"], path
            assert got["degraded"] is want["degraded"] is False, path
    # the version's lists are spread over all three nodes
    counts = []
    for node in published.nodes:
        client = redis.Redis(port=node.port)
        counts.append(sum(1 for _ in client.scan_iter(match=KEYS.version_pattern(built.version))))
        client.close()
    assert min(counts) > 0 and sum(counts) >= len(built.users())


def test_feedback_runs_its_scripts_on_one_slot_of_the_cluster(
    make_gateway: MakeGateway, published: LocalCluster, built: BuiltBundle
) -> None:
    gateway = make_gateway(published.url, redis_cluster=True, trending_weight=0.5)
    uid = built.users()["user_id"][1]
    before = gateway.get(f"/recommend/{uid}", params={"top_k": 20}).json()["items"]
    clicked = before[0]["id"]
    events = [{"event_id": f"c-{n}", "uid": f"fan-{n}", "item_id": clicked, "type": "click"}
              for n in range(20)]  # fmt: skip
    events.append({"event_id": "c-own", "uid": uid, "item_id": clicked, "type": "click"})
    assert gateway.post("/events", json={"events": events}).json() == {
        "accepted": 21,
        "duplicates": 0,
    }
    assert gateway.post("/events", json={"events": events[:3]}).json()["duplicates"] == 3
    after = [
        i["id"] for i in gateway.get(f"/recommend/{uid}", params={"top_k": 20}).json()["items"]
    ]
    assert clicked not in after  # the fresh history reached the next request
    gateway.runtime.recommender.trending = ()  # the poller sums the buckets again
    wait_for(lambda: clicked in gateway.get("/recall/someone-new").json()["items"][:2])
    client = redis.RedisCluster.from_url(published.url)
    try:
        assert client.xlen(KEYS.events) == 21
        slots = {client.keyslot(k) for k in (KEYS.events, KEYS.recent(uid), KEYS.trending(1))}
        assert len(slots) == 1
    finally:
        client.close()
