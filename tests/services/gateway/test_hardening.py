"""What a demanding operator tries: broken models, huge or stalled requests, bad bytes, keys."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
import redis
import safetensors.torch

from services.gateway.bundle import ServingBundle
from shared.bundle import Files
from shared.errors import BundleError
from shared.keys import Keys
from shared.settings import masked
from tests.services.conftest import BuiltBundle
from tests.services.gateway.conftest import LiveGateway, MakeGateway, wait_for

RANKER_WEIGHTS = Files.RANKER.format(kind="dcn") + ".safetensors"


def _nan_weights(root: Path) -> tuple[str, ...]:
    path = root / RANKER_WEIGHTS
    tensors = safetensors.torch.load_file(path)
    name = next(n for n, t in tensors.items() if t.is_floating_point() and t.numel() > 8)
    tensors[name][0] = float("nan")
    safetensors.torch.save_file(tensors, path)
    return (RANKER_WEIGHTS,)  # re-hashed into the manifest: only the values tell


def _flipped_bytes(root: Path) -> tuple[str, ...]:
    path = root / RANKER_WEIGHTS
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # inside the tensors, past the header
    data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))
    return (RANKER_WEIGHTS,)


def _nudged_weights(root: Path) -> tuple[str, ...]:
    path = root / RANKER_WEIGHTS
    tensors = safetensors.torch.load_file(path)
    for name, tensor in tensors.items():  # every weight a little off: finite, and wrong
        if tensor.is_floating_point():
            tensors[name] = tensor * 1.05
    safetensors.torch.save_file(tensors, path)
    return (RANKER_WEIGHTS,)


@pytest.mark.parametrize(
    ("change", "reasons"),
    [
        (_nan_weights, {"non_finite"}),
        (_flipped_bytes, {"non_finite", "probe"}),
        (_nudged_weights, {"probe"}),
    ],
)
def test_a_model_that_does_not_prove_itself_is_refused(
    built: BuiltBundle,
    change,
    reasons: set[str],  # noqa: ANN001
) -> None:
    version = built.derive(f"broken-{change.__name__}", change)
    with pytest.raises(BundleError) as refused:
        ServingBundle.load(built.artifacts, version, runtime="torch")
    assert refused.value.reason in reasons, str(refused.value)


def test_a_nan_bundle_is_refused_while_the_old_one_serves(
    make_gateway: MakeGateway, scratch_url: str, built: BuiltBundle
) -> None:
    gateway = make_gateway(scratch_url)
    broken = built.derive("nan-version", _nan_weights)
    client = redis.Redis.from_url(scratch_url)
    client.set(Keys().active, broken)
    client.close()

    wait_for(lambda: gateway.get("/health").json()["dependencies"]["bundle"].startswith("stale"))
    health = gateway.get("/health").json()
    assert health["dependencies"]["bundle"] == f"stale: version {broken} refused (non_finite)"
    assert health["status"] == "degraded" and health["version"] == built.version
    body = gateway.get(f"/recommend/{built.users()['user_id'][0]}").json()
    assert body["version"] == built.version
    assert all(isinstance(i["score"], float) for i in body["items"])
    metrics = gateway.get("/metrics").text
    assert 'recsys_bundle_load_failures_total{reason="non_finite"} 1.0' in metrics


def test_a_bundle_without_probes_is_refused(built: BuiltBundle) -> None:
    def drop_probes(root: Path) -> tuple[str, ...]:
        (root / Files.PROBES).unlink()
        return ()

    version = built.derive("no-probes", drop_probes)
    with pytest.raises(BundleError, match="missing"):
        ServingBundle.load(built.artifacts, version)


# --- bounded requests ---------------------------------------------------------------------


def test_a_huge_body_is_refused_before_it_is_read(api: LiveGateway) -> None:
    body = b'{"uid": "u1", "items": ["' + b"x" * (10 << 20) + b'"]}'
    started = time.perf_counter()
    response = api.post("/rerank", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert time.perf_counter() - started < 2
    assert len(response.content) < 200


def test_invalid_input_is_not_echoed_whole(api: LiveGateway) -> None:
    long_uid = "a\n" + "b" * 5000
    response = api.post("/rerank", json={"uid": long_uid, "items": ["i"] * 1001})
    assert response.status_code == 422
    assert len(response.content) < 2000
    assert "b" * 65 not in response.text


def _stalled(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(b"GET /recommend/u1 HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    return conn


def test_stalled_connections_are_closed(make_gateway: MakeGateway, store_url: str) -> None:
    gateway = make_gateway(store_url, request_timeout_s=0.5)
    conns = [_stalled(gateway.port) for _ in range(20)]
    try:
        for conn in conns:
            conn.settimeout(5)
            assert conn.recv(1024) == b""  # closed by the server within the deadline
    finally:
        for conn in conns:
            conn.close()
    assert gateway.get("/livez").status_code == 200


def test_past_the_concurrency_limit_requests_get_503(
    make_gateway: MakeGateway, store_url: str
) -> None:
    gateway = make_gateway(store_url, max_concurrency=3)
    gateway.get("/livez")  # the test client's own keep-alive connection is one of the three
    conns = [_stalled(gateway.port) for _ in range(2)]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}") as other:
            assert other.get("/livez").status_code == 503
    finally:
        for conn in conns:
            conn.close()
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{gateway.port}/livez").status_code == 200)


# --- bytes and schema ---------------------------------------------------------------------------


def test_invalid_utf8_is_422_naming_the_field(api: LiveGateway) -> None:
    answers = [api.get(f"/recommend/{raw}") for raw in ("%FF", "%FE", "ab%C3")]
    for response in answers:
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["path", "uid"]
    assert answers[0].json() != answers[1].json()  # distinct bytes are not one U+FFFD
    body = b'{"uid": "\xff", "items": []}'
    response = api.post("/rerank", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body"]
    assert api.get("/recommend/%EF%BF%BD").status_code == 200  # U+FFFD itself is a valid uid


def test_openapi_holds_every_rule_and_status(api: LiveGateway) -> None:
    spec = api.get("/openapi.json").json()
    params = {p["name"]: p for p in spec["paths"]["/recommend/{uid}"]["get"]["parameters"]}
    assert params["uid"]["schema"]["pattern"] and params["uid"]["schema"]["minLength"] == 1
    assert {"/livez", "/readyz", "/health"} <= set(spec["paths"])
    assert {"401", "413", "422", "503"} <= set(spec["paths"]["/rerank"]["post"]["responses"])
    assert "503" in spec["paths"]["/recommend/{uid}"]["get"]["responses"]
    assert "X-API-Key" in str(spec["components"]["securitySchemes"])


def test_the_api_key_guards_rerank_when_set(
    make_gateway: MakeGateway, store_url: str, built: BuiltBundle
) -> None:
    gateway = make_gateway(store_url, api_keys="k-one, k-two")
    body = {"uid": built.users()["user_id"][0], "items": built.items()["item_id"].to_list()[:3]}
    assert gateway.post("/rerank", json=body).status_code == 401
    assert gateway.post("/rerank", json=body, headers={"X-API-Key": "nope"}).status_code == 401
    assert gateway.post("/rerank", json=body, headers={"X-API-Key": "k-two"}).status_code == 200
    assert gateway.get(f"/recommend/{body['uid']}").status_code == 200  # reads stay open


def test_passwords_are_masked_in_what_is_printed() -> None:
    assert masked("redis://:s3cret@db:6379/0") == "redis://:***@db:6379/0"
    assert masked("redis://app:s3cret@db/1") == "redis://app:***@db/1"
    assert masked("redis://db:6379/0") == "redis://db:6379/0"
