"""The live loop's online half: events in exactly once, used by the very next request."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import redis

from services.gateway.schemas import MAX_EVENTS
from shared.keys import Keys
from shared.redis_server import RedisServer
from tests.services.conftest import PINNED, BuiltBundle, OfflineScorer
from tests.services.gateway.conftest import LiveGateway, MakeGateway, wait_for

KEYS = Keys()


def _event(n: int, uid: str, item: str, kind: str = "click", **more: Any) -> dict[str, Any]:
    return {"event_id": f"e-{uid}-{n}", "uid": uid, "item_id": item, "type": kind, **more}


def _stream_length(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.xlen(KEYS.events))
    finally:
        client.close()


@pytest.fixture
def gateway(make_gateway: MakeGateway, scratch_url: str) -> LiveGateway:
    return make_gateway(scratch_url, scorer="process")


@pytest.fixture(scope="module")
def offline(built: BuiltBundle) -> OfflineScorer:
    return OfflineScorer(built)


def test_a_repeated_batch_adds_nothing(
    gateway: LiveGateway, scratch_url: str, built: BuiltBundle
) -> None:
    uid, items = built.users()["user_id"][0], built.items()["item_id"].to_list()
    batch = {"events": [_event(i, uid, items[i], "impression") for i in range(5)]}
    batch["events"].append(batch["events"][0])  # a repeat inside the batch counts once
    first = gateway.post("/events", json=batch)
    assert first.status_code == 202 and first.json() == {"accepted": 5, "duplicates": 1}
    again = gateway.post("/events", json=batch)  # the client retries the whole batch
    assert again.status_code == 202 and again.json() == {"accepted": 0, "duplicates": 6}
    assert _stream_length(scratch_url) == 5
    metrics = gateway.get("/metrics").text
    assert 'recsys_events_total{outcome="accepted"} 5.0' in metrics
    assert 'recsys_events_total{outcome="duplicate"} 7.0' in metrics


def test_unknown_items_are_logged_but_change_no_answer(
    gateway: LiveGateway, scratch_url: str, built: BuiltBundle
) -> None:
    uid = built.users()["user_id"][4]
    body = {"events": [_event(0, uid, "not-in-the-bundle", ts=9e10)]}  # nor a far future
    assert gateway.post("/events", json=body).json()["accepted"] == 1
    client = redis.Redis.from_url(scratch_url)
    try:
        assert client.xlen(KEYS.events) == 1 and not client.exists(KEYS.recent(uid))
        assert not client.keys(KEYS.trending(0).rsplit(":", 1)[0] + ":*")
    finally:
        client.close()
    gateway.get(f"/recommend/{uid}")
    assert "recsys_fresh_recalls_total 0.0" in gateway.get("/metrics").text


@pytest.mark.parametrize(
    ("bad", "loc"),
    [
        ({"type": "like"}, ["body", "events", 2, "type"]),
        ({"uid": ""}, ["body", "events", 2, "uid"]),
        ({"item_id": "x" * 300}, ["body", "events", 2, "item_id"]),
        ({"ts": -1}, ["body", "events", 2, "ts"]),
        ({"context": {"position": -1}}, ["body", "events", 2, "context", "position"]),
        ({"colour": "red"}, ["body", "events", 2, "colour"]),
    ],
)
def test_a_bad_event_refuses_the_whole_batch(
    gateway: LiveGateway, scratch_url: str, built: BuiltBundle, bad: dict, loc: list
) -> None:
    uid, item = built.users()["user_id"][0], built.items()["item_id"][0]
    events = [_event(i, uid, item) for i in range(4)]
    events[2] |= bad
    response = gateway.post("/events", json={"events": events})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    assert _stream_length(scratch_url) == 0


def test_batches_are_bounded(gateway: LiveGateway, built: BuiltBundle) -> None:
    uid, item = built.users()["user_id"][0], built.items()["item_id"][0]
    too_many = [_event(i, uid, item) for i in range(MAX_EVENTS + 1)]
    response = gateway.post("/events", json={"events": too_many})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "events"]
    assert gateway.post("/events", json={"events": []}).status_code == 422


def _fresh_history(built: BuiltBundle, offline: OfflineScorer, uid: str, clicked: list[str]):
    """The history the next request must read: the clicks, newest first, then the served one."""
    tables = offline.tables
    slots = [int(tables.items.id_slot[tables.items.index[i]]) for i in reversed(clicked)]
    served = tables.history[tables.users.index.get(uid, 0)]
    merged = slots + [int(h) for h in served if h and h not in slots]
    history = np.zeros(len(served), dtype=np.int64)
    history[: min(len(merged), len(served))] = merged[: len(served)]
    return history


def _assert_offline_scores(
    offline: OfflineScorer, uid: str, items: list[dict], history: np.ndarray
) -> None:
    n = len(items)
    user = np.full(n, offline.tables.users.index.get(uid, 0))
    rows = offline.tables.items.rows([i["id"] for i in items])
    score, probs = offline.score(
        user, rows, PINNED.hour, PINNED.weekday(), np.tile(history, (n, 1))
    )
    np.testing.assert_allclose([i["score"] for i in items], score, atol=1e-5, rtol=0)
    for task, p in probs.items():
        np.testing.assert_allclose([i["scores"][task] for i in items], p, atol=1e-5, rtol=0)


def test_a_click_changes_the_next_recommendation(
    gateway: LiveGateway, built: BuiltBundle, offline: OfflineScorer
) -> None:
    uid = built.users()["user_id"][1]
    before = gateway.get(f"/recommend/{uid}", params={"top_k": 20}).json()
    clicked = [before["items"][0]["id"], before["items"][3]["id"]]
    events = [
        _event(
            i, uid, item, context={"page": "home", "position": i}, request_id=before["request_id"]
        )
        for i, item in enumerate(clicked)
    ]
    assert gateway.post("/events", json={"events": events}).json()["accepted"] == 2
    after = gateway.get(f"/recommend/{uid}", params={"top_k": 20}).json()
    ids = [i["id"] for i in after["items"]]
    assert not set(clicked) & set(ids) and len(ids) == 20  # just interacted with: left out
    assert ids != [i["id"] for i in before["items"]]
    assert after["request_id"] != before["request_id"]
    # the ranker read the fresh history: the offline model's scores over it, pair for pair
    _assert_offline_scores(
        offline, uid, after["items"], _fresh_history(built, offline, uid, clicked)
    )
    recall = gateway.get(f"/recall/{uid}", params={"top_k": 50}).json()["items"]
    assert not set(clicked) & set(recall)
    assert "recsys_fresh_recalls_total 2.0" in gateway.get("/metrics").text


def test_clicks_warm_the_users_fresh_side_before_their_next_request(
    gateway: LiveGateway, built: BuiltBundle, offline: OfflineScorer
) -> None:
    uid, items = built.users()["user_id"][2], built.items()["item_id"].to_list()
    impressions = [_event(i, uid, items[i], "impression") for i in range(3)]
    gateway.post("/events", json={"events": impressions})
    assert "recsys_fresh_warmed_total 0.0" in gateway.get("/metrics").text  # no positive
    gateway.post(
        "/events", json={"events": [_event(9, uid, items[5]), _event(8, "newbie", items[6])]}
    )
    assert "recsys_fresh_warmed_total 2.0" in gateway.get("/metrics").text
    body = gateway.get(f"/recommend/{uid}", params={"top_k": 10}).json()  # served from it
    _assert_offline_scores(
        offline, uid, body["items"], _fresh_history(built, offline, uid, [items[5]])
    )


def test_a_cold_user_is_personalized_by_their_clicks(
    gateway: LiveGateway, built: BuiltBundle, offline: OfflineScorer
) -> None:
    other = gateway.get("/recall/another-newcomer", params={"top_k": 50}).json()["items"]
    clicked = built.items()["item_id"].to_list()[-3:]  # rarely seen: far from the hot list
    events = [_event(i, "newcomer", item) for i, item in enumerate(clicked)]
    assert gateway.post("/events", json={"events": events}).json()["accepted"] == 3
    recall = gateway.get("/recall/newcomer", params={"top_k": 50}).json()
    assert recall["is_cold_start"] is True  # the bundle still does not know them
    assert not set(clicked) & set(recall["items"])
    assert recall["items"] != [i for i in other if i not in clicked][:50]
    body = gateway.get("/recommend/newcomer", params={"top_k": 10}).json()
    _assert_offline_scores(
        offline, "newcomer", body["items"], _fresh_history(built, offline, "newcomer", clicked)
    )


def test_trending_items_reach_cold_users(
    make_gateway: MakeGateway, scratch_url: str, built: BuiltBundle
) -> None:
    gateway = make_gateway(scratch_url, trending_weight=0.5)
    hot = gateway.get("/recall/someone-new", params={"top_k": 50}).json()["items"]
    item = next(i for i in reversed(built.items()["item_id"].to_list()) if i not in hot)
    events = [_event(0, f"fan-{n}", item) for n in range(20)]
    assert gateway.post("/events", json={"events": events}).json()["accepted"] == 20
    gateway.runtime.recommender.trending = ()  # the poller refreshes it (every 0.1 s here)

    def first_places() -> list[str]:
        return gateway.get("/recall/someone-new", params={"top_k": 5}).json()["items"][:2]

    wait_for(lambda: item in first_places())
    off = make_gateway(scratch_url, trending_weight=0.0)
    assert item not in off.get("/recall/someone-new", params={"top_k": 50}).json()["items"]


def test_events_need_redis_and_say_so(
    make_gateway: MakeGateway, own_redis: RedisServer, built: BuiltBundle
) -> None:
    gateway = make_gateway(own_redis.url)
    uid, item = built.users()["user_id"][0], built.items()["item_id"][0]
    own_redis.stop()
    response = gateway.post("/events", json={"events": [_event(0, uid, item)]})
    assert (
        response.status_code == 503 and "written whole or not at all" in response.json()["detail"]
    )
    assert gateway.get(f"/recommend/{uid}").json()["degraded"] is True
    own_redis.start()
    built.publish(own_redis.url)
    retried = gateway.post("/events", json={"events": [_event(0, uid, item)]})
    assert retried.status_code == 202 and retried.json()["accepted"] == 1


def test_events_need_the_api_key_when_one_is_set(
    make_gateway: MakeGateway, scratch_url: str, built: BuiltBundle
) -> None:
    gateway = make_gateway(scratch_url, api_keys="k1")
    body = {"events": [_event(0, built.users()["user_id"][0], built.items()["item_id"][0])]}
    assert gateway.post("/events", json=body).status_code == 401
    assert gateway.post("/events", json=body, headers={"X-API-Key": "k1"}).status_code == 202
