"""Request context: validated against the served spec, listed in the OpenAPI schema,
an anchor's nearest items in the recall."""

from __future__ import annotations

import numpy as np

from tests.services.conftest import BuiltBundle
from tests.services.gateway.conftest import LiveGateway


def test_unknown_context_keys_are_422_naming_each(api: LiveGateway, built: BuiltBundle) -> None:
    uid = built.users()["user_id"][0]
    for path in (f"/recommend/{uid}", f"/recall/{uid}"):
        r = api.get(path, params={"page": "home", "colour": "red", "size": "9"})
        assert r.status_code == 422
        locs = [e["loc"] for e in r.json()["detail"]]
        assert locs == [["query", "colour"], ["query", "size"]]
        assert "page, position, anchor" in r.json()["detail"][0]["msg"]
    r = api.post("/rerank", json={"uid": uid, "items": ["i1"], "context": {"weather": "rain"}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "context", "weather"]


def test_unseen_context_values_are_out_of_vocabulary(api: LiveGateway, built: BuiltBundle) -> None:
    uid = built.users()["user_id"][0]
    r = api.get(f"/recommend/{uid}", params={"page": "never-seen", "position": "99"})
    assert r.status_code == 200 and r.json()["items"]
    r = api.get(f"/recommend/{uid}", params={"anchor": "no-such-item"})
    assert r.status_code == 200 and r.json()["items"]


def test_the_openapi_schema_lists_the_served_context(api: LiveGateway) -> None:
    schema = api.get("/openapi.json").json()
    for path in ("/recommend/{uid}", "/recall/{uid}"):
        params = {p["name"]: p for p in schema["paths"][path]["get"]["parameters"]}
        assert {"uid", "top_k", "page", "position", "anchor"} <= params.keys()
        assert "home" in params["page"]["description"]
        assert "default 0" in params["position"]["description"]
    rerank = schema["components"]["schemas"]["RerankRequest"]["properties"]
    assert "context" in rerank


def test_an_anchor_blends_its_nearest_items_into_the_recall(
    api: LiveGateway, built: BuiltBundle
) -> None:
    uid = built.users()["user_id"][0]
    served = api.runtime.bundle
    anchor = built.items()["item_id"][3]
    near = served.item_ids[served.similar(served.item_rows([anchor])[0], 50)].tolist()
    plain = api.get(f"/recall/{uid}", params={"top_k": 20}).json()["items"]
    anchored = api.get(f"/recall/{uid}", params={"top_k": 20, "anchor": anchor}).json()["items"]
    assert anchored != plain and len(anchored) == 20
    assert anchor not in anchored  # "more like this" shows other items
    seen = built.seen(uid)
    assert anchored[0] == next(i for i in near if i not in seen)  # the anchor's nearest first
    from_anchor = [i for i in anchored if i in near and i not in plain]
    assert len(from_anchor) >= 5
    metrics = api.get("/metrics").text
    assert "recsys_anchor_recalls_total" in metrics
    body = api.get(f"/recommend/{uid}", params={"top_k": 10, "anchor": anchor}).json()
    assert len(body["items"]) == 10


def test_an_anchors_neighbours_are_by_the_towers_cosine_alone(
    api: LiveGateway, built: BuiltBundle
) -> None:
    served = api.runtime.bundle
    row = int(served.item_rows([built.items()["item_id"][3]])[0])
    unit = np.asarray(served.item_vectors[:, : served.user_tower.config.out_dim])
    order = np.argsort(-(unit[1:] @ unit[row]), kind="stable") + 1  # the priors left out
    assert served.similar(row, 10).tolist() == [r for r in order if r != row][:10]
