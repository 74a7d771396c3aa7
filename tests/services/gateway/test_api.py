"""The HTTP API of docs/architecture.md against a real bundle and a real Redis."""

from __future__ import annotations

import polars as pl
import pytest
import redis

from services.gateway.schemas import RecallResponse, RecommendResponse, RerankResponse
from shared.bundle import Files
from shared.keys import Keys
from tests.services.conftest import BuiltBundle, null_user_features
from tests.services.gateway.conftest import LiveGateway, MakeGateway, wait_for


@pytest.fixture(scope="module")
def uids(built: BuiltBundle) -> list[str]:
    return built.users()["user_id"].to_list()


def test_health_names_each_dependency(api: LiveGateway, built: BuiltBundle) -> None:
    response = api.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "ready": True,
        "draining": False,
        "version": built.version,
        "dependencies": {"redis": "ok", "bundle": "ok"},
        "failing": [],
    }
    assert api.get("/livez").json() == {"status": "alive"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "version": built.version,
        "degraded": False,
        "reason": None,
    }


def test_recall_shape(api: LiveGateway, uids: list[str], built: BuiltBundle) -> None:
    body = api.get(f"/recall/{uids[0]}", params={"top_k": 7}).json()
    assert body["uid"] == uids[0] and body["stage"] == "recall"
    assert body["count"] == len(body["items"]) == 7
    assert body["is_cold_start"] is False and body["degraded"] is False
    assert set(body["items"]) <= set(built.items()["item_id"].to_list())


def test_recall_follows_the_published_list(
    api: LiveGateway, uids: list[str], store_url: str, built: BuiltBundle
) -> None:
    client = redis.Redis.from_url(store_url, decode_responses=True)
    listed = client.zrevrange(Keys().recall(built.version, uids[1]), 0, 9)
    client.close()
    assert api.get(f"/recall/{uids[1]}", params={"top_k": 10}).json()["items"] == listed


def test_recommend_shape(api: LiveGateway, uids: list[str], built: BuiltBundle) -> None:
    body = api.get(f"/recommend/{uids[0]}").json()
    assert body["uid"] == uids[0] and body["stage"] == "rank"
    assert body["version"] == built.version
    assert body["is_cold_start"] is False and body["degraded"] is False
    assert len(body["items"]) == 10  # the default top_k
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    weights = built.score_weights()
    for item in body["items"]:  # the values themselves: test_skew.py
        assert set(item["scores"]) >= set(weights)


def test_unknown_user_is_a_cold_start_from_global_hot(api: LiveGateway, built: BuiltBundle) -> None:
    body = api.get("/recommend/someone-new", params={"top_k": 5}).json()
    assert body["is_cold_start"] is True and len(body["items"]) == 5
    recall = api.get("/recall/someone-new", params={"top_k": 5}).json()
    hot = pl.read_parquet(built.root / Files.HOT).join(
        built.items(), on="item_idx", maintain_order="left"
    )
    assert recall["is_cold_start"] is True
    assert recall["items"] == hot["item_id"].head(5).to_list()


@pytest.mark.parametrize("endpoint", ["recall", "recommend"])
def test_top_k_beyond_what_exists_answers_what_there_is(
    api: LiveGateway, uids: list[str], built: BuiltBundle, endpoint: str
) -> None:
    # 200 > the 40-item recall list > the 80-item catalogue minus what the user saw
    response = api.get(f"/{endpoint}/{uids[2]}", params={"top_k": 200})
    assert response.status_code == 200
    items = response.json()["items"]
    ids = [i if isinstance(i, str) else i["id"] for i in items]
    assert len(ids) == len(set(ids)) == built.items().height - len(built.seen(uids[2]))


def test_seen_items_are_never_recommended(
    api: LiveGateway, uids: list[str], built: BuiltBundle
) -> None:
    for uid in uids[:10]:
        seen = built.seen(uid)
        assert seen, "the fixture's users all have interactions"
        recommended = {
            i["id"] for i in api.get(f"/recommend/{uid}", params={"top_k": 50}).json()["items"]
        }
        assert not recommended & seen
        assert not set(api.get(f"/recall/{uid}", params={"top_k": 200}).json()["items"]) & seen


def test_seen_items_come_back_when_exclude_seen_is_off(
    make_gateway: MakeGateway, scratch_url: str, uids: list[str], built: BuiltBundle
) -> None:
    uid = uids[3]
    seen_item = sorted(built.seen(uid))[0]
    client = redis.Redis.from_url(scratch_url, decode_responses=True)
    client.zadd(Keys().recall(built.version, uid), {seen_item: 10_000})  # on top of the list
    client.close()
    assert seen_item not in make_gateway(scratch_url).get(f"/recall/{uid}").json()["items"]
    assert (
        make_gateway(scratch_url, exclude_seen=False).get(f"/recall/{uid}").json()["items"][0]
        == seen_item
    )


def test_known_user_without_a_list_gets_the_online_tower(
    make_gateway: MakeGateway, scratch_url: str, uids: list[str], built: BuiltBundle
) -> None:
    uid = uids[4]
    client = redis.Redis.from_url(scratch_url)
    client.delete(Keys().recall(built.version, uid))
    client.close()
    api = make_gateway(scratch_url)
    body = api.get(f"/recommend/{uid}", params={"top_k": 15}).json()
    assert body["is_cold_start"] is False and body["degraded"] is False
    assert len(body["items"]) == 15
    assert not {i["id"] for i in body["items"]} & built.seen(uid)
    assert 'recsys_fallbacks_total{reason="online_tower"} 1.0' in api.get("/metrics").text


def test_user_in_redis_but_not_in_the_bundle_is_cold_for_features(
    make_gateway: MakeGateway, scratch_url: str, built: BuiltBundle
) -> None:
    listed = built.items()["item_id"].to_list()[:6]
    client = redis.Redis.from_url(scratch_url)
    client.zadd(
        Keys().recall(built.version, "ghost"), {item: 10 - i for i, item in enumerate(listed)}
    )
    client.close()
    api = make_gateway(scratch_url, rank_candidates=6)  # rank exactly the listed items
    recall = api.get("/recall/ghost", params={"top_k": 6}).json()
    assert recall["items"] == listed and recall["is_cold_start"] is True
    body = api.get("/recommend/ghost", params={"top_k": 6}).json()
    assert sorted(i["id"] for i in body["items"]) == sorted(listed)
    metrics = api.get("/metrics").text
    assert 'recsys_fallbacks_total{reason="global_hot"} 0.0' in metrics
    assert "recsys_cold_starts_total 2.0" in metrics


def test_known_user_with_null_features(
    make_gateway: MakeGateway, scratch_url: str, uids: list[str], built: BuiltBundle
) -> None:
    uid = uids[5]
    version = built.derive("null-features", lambda root: null_user_features(root, uid))
    built.publish(scratch_url, version)
    api = make_gateway(scratch_url)
    body = api.get(f"/recommend/{uid}", params={"top_k": 5}).json()
    assert body["version"] == version and body["is_cold_start"] is False
    assert len(body["items"]) == 5
    rerank = api.post(
        "/rerank", json={"uid": uid, "items": [i["id"] for i in body["items"]]}
    ).json()
    assert [i["score"] for i in rerank["items"]] == pytest.approx(
        [i["score"] for i in body["items"]], abs=1e-6
    )


def test_rerank_ranks_the_given_items_and_reports_unknown_ones(
    api: LiveGateway, uids: list[str], built: BuiltBundle
) -> None:
    items = built.items()["item_id"].to_list()[:5]
    body = api.post(
        "/rerank",
        json={"uid": uids[0], "items": [items[0], "nope", *items, items[2], "nope", "zz"]},
    ).json()
    assert body["stage"] == "rerank" and body["version"] == built.version
    assert sorted(i["id"] for i in body["items"]) == sorted(items)  # repeats counted once
    assert body["unknown_items"] == ["nope", "zz"]  # first-seen order, once each
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    top = api.post("/rerank", json={"uid": uids[0], "items": items, "top_k": 2}).json()["items"]
    assert top == body["items"][:2]
    assert api.post("/rerank", json={"uid": "x", "items": []}).json()["items"] == []


@pytest.mark.parametrize(
    ("method", "path", "body", "reason"),
    [
        ("GET", "/recommend/u1?top_k=0", None, "greater than or equal to 1"),
        ("GET", "/recommend/u1?top_k=201", None, "less than or equal to 200"),
        ("GET", "/recall/u1?top_k=abc", None, "valid integer"),
        ("GET", "/recommend/" + "u" * 129, None, "at most 128 characters"),
        ("GET", "/recall/bad%01uid", None, "match pattern"),
        ("GET", "/recall/bad%E2%80%8Buid", None, "match pattern"),  # a zero-width space
        ("GET", "/recommend/", None, "must not be empty"),
        ("GET", "/recall/", None, "must not be empty"),
        ("POST", "/rerank", {"uid": "", "items": []}, "at least 1 character"),
        ("POST", "/rerank", {"uid": "a\nb", "items": []}, "match pattern"),
        ("POST", "/rerank", {"uid": "u1", "items": ["i"] * 1001}, "at most 1000 items"),
        (
            "POST",
            "/rerank",
            {"uid": "u1", "items": ["i1"], "top_k": 0},
            "greater than or equal to 1",
        ),
        ("POST", "/rerank", {"uid": "u1"}, "Field required"),
    ],
)
def test_invalid_input_is_422_with_the_reason(
    api: LiveGateway, method: str, path: str, body: dict | None, reason: str
) -> None:
    response = api.request(method, path, json=body)
    assert response.status_code == 422, response.text
    assert reason in response.text


def test_metrics_expose_the_dashboard_contract(
    make_gateway: MakeGateway, store_url: str, uids: list[str]
) -> None:
    api = make_gateway(store_url)
    api.get(f"/recommend/{uids[0]}")
    api.get("/recall/someone-new")
    api.get("/recommend/u1?top_k=0")
    text = api.get("/metrics").text
    for line in (
        'recsys_request_latency_seconds_count{route="/recommend/{uid}"} 2.0',
        'recsys_request_latency_seconds_count{route="/recall/{uid}"} 1.0',
        'recsys_requests_total{route="/recommend/{uid}",status="200"} 1.0',
        'recsys_requests_total{route="/recommend/{uid}",status="422"} 1.0',
        'recsys_stage_latency_seconds_count{stage="recall"} 2.0',
        'recsys_stage_latency_seconds_count{stage="features"} 1.0',
        'recsys_stage_latency_seconds_count{stage="scoring"} 1.0',
        "recsys_cold_starts_total 1.0",
        'recsys_fallbacks_total{reason="global_hot"} 1.0',
        'recsys_errors_total{kind="validation"} 1.0',
        'recsys_bundle_load_failures_total{reason="probe"} 0.0',
    ):
        assert line in text, line
    assert "recsys_served_version_info{version=" in text
    # a second app in the same process has its own registry
    assert 'route="/recommend/{uid}"' not in make_gateway(store_url).get("/metrics").text


def test_openapi_documents_the_api(api: LiveGateway) -> None:
    spec = api.get("/openapi.json").json()
    assert {"/recall/{uid}", "/recommend/{uid}", "/rerank", "/health", "/metrics"} <= set(
        spec["paths"]
    )
    params = {p["name"]: p for p in spec["paths"]["/recommend/{uid}"]["get"]["parameters"]}
    assert params["top_k"]["schema"]["maximum"] == 200
    assert params["uid"]["schema"]["maxLength"] == 128
    assert api.get("/docs").status_code == 200
    ok = spec["paths"]["/recommend/{uid}"]["get"]["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/RecommendResponse"}


def test_answers_are_exactly_the_documented_schemas(
    api: LiveGateway, uids: list[str], built: BuiltBundle
) -> None:
    """Responses are built as plain data for speed; each must still be its schema (no extra
    or missing field, the right types), for a known user and a cold one."""
    items = built.items()["item_id"].head(5).to_list()
    for uid in (uids[0], "someone-new"):
        RecallResponse.model_validate_json(api.get(f"/recall/{uid}").content, strict=True)
        RecommendResponse.model_validate_json(api.get(f"/recommend/{uid}").content, strict=True)
        body = api.post("/rerank", json={"uid": uid, "items": [*items, "nope"]}).content
        RerankResponse.model_validate_json(body, strict=True)


def test_no_bundle_yet_is_503(
    make_gateway: MakeGateway,
    redis_server,
    tmp_path,  # noqa: ANN001
) -> None:
    from tests.services.conftest import db_url  # noqa: PLC0415

    url = db_url(redis_server, 7)
    redis.Redis.from_url(url).flushdb()
    api = make_gateway(url, artifacts_dir=tmp_path)  # no bundle on disk either
    health = api.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable" and health.json()["ready"] is False
    assert health.json()["failing"] == ["redis", "bundle"]
    assert "no active version" in health.json()["dependencies"]["bundle"]
    assert api.get("/readyz").status_code == 503
    assert api.get("/livez").status_code == 200
    response = api.get("/recommend/u1")
    assert response.status_code == 503 and "no bundle loaded yet" in response.json()["detail"]
    assert str(tmp_path) not in health.text + response.text


def test_redis_restarted_empty_is_stale_and_degraded(
    make_gateway: MakeGateway,
    own_redis,
    built: BuiltBundle,  # noqa: ANN001
) -> None:
    built.publish(own_redis.url)
    api = make_gateway(own_redis.url)
    uid = built.users()["user_id"][0]
    assert api.get(f"/recommend/{uid}").json()["degraded"] is False
    redis.Redis.from_url(own_redis.url).flushall()  # as a restart without persistence would

    def stale() -> bool:
        return api.get("/health").json()["dependencies"]["redis"].startswith("stale")

    wait_for(stale)
    health = api.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert "no active version" in health.json()["dependencies"]["redis"]
    assert api.get("/readyz").json()["degraded"] is True
    body = api.get(f"/recommend/{uid}").json()
    assert body["degraded"] is True and len(body["items"]) == 10  # online tower, from the bundle
    built.publish(own_redis.url)
    wait_for(lambda: api.get("/health").json()["status"] == "ok")
    assert api.get(f"/recommend/{uid}").json()["degraded"] is False


def test_every_metric_the_dashboard_reads_is_exported(api: LiveGateway) -> None:
    from tests.test_deploy import EXPORTED_METRICS  # noqa: PLC0415  (the dashboard's contract)

    api.get("/recommend/someone")
    names = {
        line.split("{")[0].split(" ")[0]
        for line in api.get("/metrics").text.splitlines()
        if line and not line.startswith("#")
    }
    assert EXPORTED_METRICS <= names, EXPORTED_METRICS - names
