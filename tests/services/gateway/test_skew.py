"""No train/serve skew: the gateway's scores are the offline model's, pair for pair.

The expected values are computed from the bundle's files alone, along the offline path
(:class:`~tests.services.conftest.OfflineScorer`), at the hour and day of week the
gateway's pinned clock reads.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.services.conftest import PINNED, BuiltBundle, OfflineScorer
from tests.services.gateway.conftest import LiveGateway, MakeGateway


class Offline(OfflineScorer):
    def scores(
        self, uid: str, item_ids: list[str], context: dict | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n = len(item_ids)
        user = np.full(n, self.tables.users.index.get(uid, 0))
        items = self.tables.items.rows(item_ids)
        return self.score(user, items, PINNED.hour, PINNED.weekday(), context=context)


@pytest.fixture(scope="module")
def offline(built: BuiltBundle) -> Offline:
    return Offline(built)


def _check(items: list[dict], expected: tuple[np.ndarray, dict[str, np.ndarray]]) -> None:
    score, probs = expected
    np.testing.assert_allclose([i["score"] for i in items], score, atol=1e-5, rtol=0)
    for task, p in probs.items():
        np.testing.assert_allclose([i["scores"][task] for i in items], p, atol=1e-5, rtol=0)


@pytest.mark.parametrize("who", ["known", "another", "cold"])
def test_rerank_scores_equal_the_offline_scores(
    api: LiveGateway, built: BuiltBundle, offline: Offline, who: str
) -> None:
    uids = built.users()["user_id"].to_list()
    uid = {"known": uids[0], "another": uids[-1], "cold": "nobody-we-know"}[who]
    every_item = built.items()["item_id"].to_list()  # seen ones too: the caller chose them
    body = api.post("/rerank", json={"uid": uid, "items": every_item}).json()
    assert len(body["items"]) == len(every_item)
    ranked = [i["id"] for i in body["items"]]
    _check(body["items"], offline.scores(uid, ranked))


def test_rerank_in_context_scores_differently_and_equals_the_offline_scores(
    api: LiveGateway, built: BuiltBundle, offline: Offline
) -> None:
    # the re-ranker use case: one user's candidates on other pages, slots and anchors
    uid = built.users()["user_id"][2]
    every_item = built.items()["item_id"].to_list()
    contexts = [
        None, {"page": "search"}, {"page": "detail", "anchor": every_item[5]},
        {"position": 7}, {"page": "search", "position": "9"}, {"page": "a-page-never-seen"},
    ]  # fmt: skip
    answers = []
    for context in contexts:
        body = api.post("/rerank", json={"uid": uid, "items": every_item, "context": context})
        assert body.status_code == 200, body.text
        items = body.json()["items"]
        given = {k: str(v) for k, v in (context or {}).items()}
        _check(items, offline.scores(uid, [i["id"] for i in items], given))
        answers.append({i["id"]: i["score"] for i in items})
    for other in answers[1:]:  # each context changes the scores
        assert max(abs(other[i] - answers[0][i]) for i in every_item) > 1e-4


def test_recommend_in_context_equals_the_offline_scores(
    api: LiveGateway, built: BuiltBundle, offline: Offline
) -> None:
    uid = built.users()["user_id"][1]
    body = api.get(f"/recommend/{uid}", params={"top_k": 20, "page": "search"}).json()
    _check(body["items"], offline.scores(uid, [i["id"] for i in body["items"]], {"page": "search"}))


def test_recommend_scores_equal_the_offline_scores(
    api: LiveGateway, built: BuiltBundle, offline: Offline
) -> None:
    for uid in built.users()["user_id"].to_list()[:5]:
        body = api.get(f"/recommend/{uid}", params={"top_k": 20}).json()
        _check(body["items"], offline.scores(uid, [i["id"] for i in body["items"]]))


@pytest.mark.parametrize(("runtime", "scorer"), [("torch", "inline"), ("onnx", "process")])
def test_every_runtime_scores_the_offline_scores(
    make_gateway: MakeGateway,
    store_url: str,
    built: BuiltBundle,
    offline: Offline,
    runtime: str,
    scorer: str,
) -> None:
    gateway = make_gateway(store_url, model_runtime=runtime, scorer=scorer)
    assert gateway.runtime.bundle.runtime == runtime
    if scorer == "process":  # the scores below come from the scoring process
        assert gateway.runtime.process.holds(built.version)
    uid = built.users()["user_id"][3]
    body = gateway.post("/rerank", json={"uid": uid, "items": built.items()["item_id"].to_list()})
    items = body.json()["items"]
    _check(items, offline.scores(uid, [i["id"] for i in items]))
