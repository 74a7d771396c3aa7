"""Whatever a client sends, the gateway answers 2xx, 404 or 422 — never a 5xx.

Inputs are drawn by hypothesis for every operation of the app's own OpenAPI document:
any unicode uid (control characters, slashes, 10 000 characters…), any top_k, any JSON
body for /rerank.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.services.gateway.conftest import LiveGateway

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ANY_UID = st.one_of(st.text(max_size=40), st.text(min_size=120, max_size=140), st.just(""))
ANY_TOP_K = st.one_of(st.integers(-10, 400), st.text(max_size=5), st.none())
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def get_routes(api: LiveGateway) -> list[str]:
    spec = api.get("/openapi.json").json()
    routes = [path for path, ops in spec["paths"].items() if "get" in ops and "{uid}" in path]
    assert routes == ["/recall/{uid}", "/recommend/{uid}"]
    return routes


@FUZZ
@given(data=st.data(), uid=ANY_UID, top_k=ANY_TOP_K)
def test_get_endpoints_never_fail(
    api: LiveGateway, get_routes: list[str], data: st.DataObject, uid: str, top_k: object
) -> None:
    route = data.draw(st.sampled_from(get_routes))
    params = {} if top_k is None else {"top_k": top_k}
    response = api.get(route.replace("{uid}", quote(uid, safe="")), params=params)
    assert response.status_code in (200, 404, 422), response.text
    if response.status_code == 200:
        assert response.json()["uid"] == uid


@FUZZ
@given(
    body=st.one_of(
        JSON,
        st.fixed_dictionaries(
            {"uid": ANY_UID, "items": st.lists(st.text(max_size=12), max_size=30)},
            optional={"top_k": ANY_TOP_K},
        ),
    )
)
def test_rerank_never_fails(api: LiveGateway, body: object) -> None:
    response = api.post("/rerank", json=body)
    assert response.status_code in (200, 422), response.text


def test_malformed_json_is_422(api: LiveGateway) -> None:
    response = api.post(
        "/rerank", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
