"""Redis faults: /health says so, /recommend degrades to the memory hot list, never 500s."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import redis

from shared.bundle import Files
from shared.redis_server import RedisServer
from tests.services.conftest import BuiltBundle
from tests.services.gateway.conftest import MakeGateway, wait_for


def test_outage_degrades_then_recovers_without_restart(
    make_gateway: MakeGateway, own_redis: RedisServer, built: BuiltBundle
) -> None:
    gateway = make_gateway(own_redis.url)
    uid = built.users()["user_id"][0]
    assert gateway.get(f"/recommend/{uid}").json()["degraded"] is False

    own_redis.stop()
    health = gateway.get("/health")
    assert health.status_code == 200  # answering, degraded: no probe pulls every replica
    assert health.json()["status"] == "degraded" and health.json()["failing"] == ["redis"]
    assert health.json()["dependencies"]["redis"] == "down: ConnectionError"  # no address
    wait_for(lambda: gateway.get("/readyz").json()["degraded"] is True)
    assert gateway.get("/readyz").status_code == 200
    for _ in range(3):
        response = gateway.get(f"/recommend/{uid}", params={"top_k": 10})
        assert response.status_code == 200
        body = response.json()
        assert body["degraded"] is True and body["version"] == built.version
        assert len(body["items"]) == 10
        assert not {i["id"] for i in body["items"]} & built.seen(uid)
    cold = gateway.get("/recommend/new-user").json()
    assert cold["degraded"] is True and cold["is_cold_start"] is True and cold["items"]
    assert gateway.get(f"/recall/{uid}").json()["degraded"] is True
    items = built.items()["item_id"].to_list()[:3]
    assert len(gateway.post("/rerank", json={"uid": uid, "items": items}).json()["items"]) == 3
    metrics = gateway.get("/metrics").text
    assert 'recsys_fallbacks_total{reason="memory_hot"} 5.0' in metrics
    assert 'recsys_errors_total{kind="redis"} 5.0' in metrics

    own_redis.start()  # same port, empty: the worker publishes again
    built.publish(own_redis.url)
    wait_for(lambda: gateway.get("/health").json()["status"] == "ok")
    body = gateway.get(f"/recommend/{uid}").json()
    assert body["degraded"] is False and len(body["items"]) == 10


def test_a_stalled_redis_times_out_into_degraded_answers(
    make_gateway: MakeGateway, own_redis: RedisServer, built: BuiltBundle
) -> None:
    gateway = make_gateway(own_redis.url, redis_timeout_s=0.25)
    uid = built.users()["user_id"][0]
    gateway.get(f"/recommend/{uid}")  # warm the pool
    pauser = redis.Redis.from_url(own_redis.url)
    pauser.execute_command("CLIENT", "PAUSE", 1500, "ALL")  # every client's command stalls
    try:
        started = time.perf_counter()
        body = gateway.get(f"/recommend/{uid}").json()
        elapsed = time.perf_counter() - started
    finally:
        pauser.execute_command("CLIENT", "UNPAUSE")
        pauser.close()
    assert body["degraded"] is True and len(body["items"]) == 10
    assert elapsed < 0.4  # the timeout bounds the call, its retry included: not 2 × 0.25 s
    wait_for(lambda: gateway.get(f"/recommend/{uid}").json()["degraded"] is False)


def test_start_with_redis_down_serves_the_newest_bundle_on_disk(
    make_gateway: MakeGateway, own_redis: RedisServer, built: BuiltBundle
) -> None:
    own_redis.stop()
    gateway = make_gateway(own_redis.url)
    health = gateway.get("/health")
    assert health.status_code == 200 and health.json()["failing"] == ["redis", "bundle"]
    assert health.json()["version"] == built.version
    assert health.json()["dependencies"]["bundle"] == "stale: redis unreachable (ConnectionError)"
    body = gateway.get(f"/recommend/{built.users()['user_id'][0]}").json()
    assert body["degraded"] is True and body["items"]

    own_redis.start()  # back, but empty: the start-up note goes, the empty store is said
    wait_for(lambda: gateway.get("/health").json()["dependencies"]["bundle"] == "ok")
    assert gateway.get("/health").json()["dependencies"]["redis"].startswith("stale: no active")
    built.publish(own_redis.url)
    # once Redis answers and names the version already served, nothing is stale any more
    wait_for(
        lambda: gateway.get("/health").json()["dependencies"] == {"redis": "ok", "bundle": "ok"}
    )
    assert gateway.get("/health").json()["status"] == "ok"


def test_a_dead_scoring_process_is_scored_inline_then_restarted(
    make_gateway: MakeGateway, store_url: str, built: BuiltBundle
) -> None:
    gateway = make_gateway(store_url, scorer="process")
    process = gateway.runtime.process
    assert gateway.get("/health").json()["dependencies"]["scorer"] == "ok"
    uid = built.users()["user_id"][0]
    before = gateway.get(f"/recommend/{uid}").json()["items"]

    os.kill(process.process.pid, signal.SIGKILL)
    wait_for(lambda: not process.holds(built.version))
    assert gateway.get("/health").json()["dependencies"]["scorer"].startswith("inline")
    after = gateway.get(f"/recommend/{uid}")
    assert after.status_code == 200 and after.json()["items"] == before  # same scores
    assert 'recsys_fallbacks_total{reason="inline_scoring"} 1.0' in gateway.get("/metrics").text

    wait_for(lambda: process.holds(built.version), timeout=60)  # restarted, version reloaded
    assert process.restarts == 1
    assert gateway.get("/health").json()["dependencies"]["scorer"] == "ok"
    assert gateway.get(f"/recommend/{uid}").json()["items"] == before


def test_a_bundle_still_being_written_is_not_served_from_disk(
    make_gateway: MakeGateway, own_redis: RedisServer, built: BuiltBundle
) -> None:
    def in_progress(root):  # noqa: ANN001, ANN202  (as after ETL: newest, never published)
        manifest = json.loads((root / Files.MANIFEST).read_text())
        manifest.pop("published")
        del manifest["files"][Files.INDEX]
        (root / Files.MANIFEST).write_text(json.dumps(manifest))
        return ()

    writing = built.derive("zz-being-written", in_progress)
    latest = built.artifacts / "LATEST"
    latest.write_text(writing)  # as ETL leaves it: LATEST names the bundle being written
    try:
        own_redis.stop()
        gateway = make_gateway(own_redis.url)
        assert gateway.get("/health").json()["version"] == built.version
        metrics = gateway.get("/metrics").text
        assert 'recsys_bundle_load_failures_total{reason="missing"} 0.0' in metrics
    finally:
        latest.write_text(built.version)
        shutil.rmtree(built.artifacts / writing)
