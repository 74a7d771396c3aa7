"""Micro-batching: concurrent /recommend requests share forward passes, answers unchanged."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.services.conftest import BuiltBundle
from tests.services.gateway.conftest import MakeGateway


async def _concurrently(base_url: str, paths: list[str]) -> list[dict]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        responses = await asyncio.gather(*(client.get(p) for p in paths))
    assert {r.status_code for r in responses} == {200}
    return [r.json() for r in responses]


@pytest.mark.parametrize("in_thread", [True, False], ids=["model-thread", "event-loop"])
def test_concurrent_requests_are_batched_with_unchanged_answers(
    make_gateway: MakeGateway, store_url: str, built: BuiltBundle, in_thread: bool
) -> None:
    gateway = make_gateway(store_url, batch_wait_ms=20, max_batch=16, score_in_thread=in_thread)
    uids = built.users()["user_id"].to_list()[:24] + ["cold-a", "cold-b"]
    paths = [f"/recommend/{uid}?top_k=8" for uid in uids] * 2
    alone = [gateway.get(p).json() for p in paths[: len(uids)]]  # one at a time
    scorer = gateway.runtime.scorer
    batches, jobs = scorer.batches, scorer.jobs
    together = asyncio.run(_concurrently(str(gateway.client.base_url), paths))
    assert scorer.jobs - jobs == len(paths)
    assert scorer.batches - batches < len(paths) / 2, "concurrent requests were not batched"
    for single, batched in zip(alone * 2, together, strict=True):
        assert [i["id"] for i in batched["items"]] == [i["id"] for i in single["items"]]
        assert [i["score"] for i in batched["items"]] == pytest.approx(
            [i["score"] for i in single["items"]], abs=1e-5
        )
