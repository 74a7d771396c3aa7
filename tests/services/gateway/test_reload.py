"""Hot reload: a new active version is loaded beside the old one and swapped in."""

from __future__ import annotations

import threading

import httpx
import pytest
import redis

from shared.bundle import Files
from shared.keys import Keys
from tests.services.conftest import BuiltBundle
from tests.services.gateway.conftest import MakeGateway, wait_for


class Hammer:
    """Requests /recommend in a loop on its own connection, recording what came back."""

    def __init__(self, base_url: str, uid: str) -> None:
        self.answers: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(base_url, uid), daemon=True)

    def _run(self, base_url: str, uid: str) -> None:
        with httpx.Client(base_url=base_url, timeout=10) as client:
            while not self._stop.is_set():
                response = client.get(f"/recommend/{uid}", params={"top_k": 5})
                version = response.json().get("version") if response.status_code == 200 else None
                self.answers.append((response.status_code, version))

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.mark.parametrize("scorer", ["inline", "process"])
def test_new_version_is_swapped_in_while_requests_flow(
    make_gateway: MakeGateway, scratch_url: str, built: BuiltBundle, scorer: str
) -> None:
    gateway = make_gateway(scratch_url, scorer=scorer)
    uid = built.users()["user_id"][0]
    assert gateway.get("/health").json()["version"] == built.version
    new = built.derive("next-version")
    with Hammer(str(gateway.client.base_url), uid) as hammer:
        wait_for(lambda: len(hammer.answers) > 20)
        built.publish(scratch_url, new)
        wait_for(lambda: gateway.get("/health").json()["version"] == new)
        wait_for(lambda: len(hammer.answers) > 0 and hammer.answers[-1][1] == new)
    statuses = {status for status, _ in hammer.answers}
    versions = [version for _, version in hammer.answers]
    assert statuses == {200}, "a request failed during the swap"
    assert versions[0] == built.version and versions[-1] == new
    switched = versions.index(new)
    assert set(versions[switched:]) == {new}, "an old version answered after the swap"
    assert gateway.get("/health").json()["dependencies"]["bundle"] == "ok"
    metrics = gateway.get("/metrics").text
    assert f'recsys_served_version_info{{version="{new}"}} 1.0' in metrics
    if scorer == "process":  # the scoring process held the new version before the swap
        assert gateway.runtime.process.holds(new)
        assert 'recsys_fallbacks_total{reason="inline_scoring"} 0.0' in metrics


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(
    make_gateway: MakeGateway, scratch_url: str, built: BuiltBundle
) -> None:
    gateway = make_gateway(scratch_url)
    broken = built.derive("broken-version")
    weights = built.artifacts / broken / (Files.RANKER.format(kind="dcn") + ".safetensors")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a torn copy
    client = redis.Redis.from_url(scratch_url)
    client.set(Keys().active, broken)  # as if a worker published what this host cannot read

    wait_for(lambda: gateway.get("/health").json()["dependencies"]["bundle"].startswith("stale"))
    health = gateway.get("/health")
    assert health.status_code == 200  # still serving
    body = health.json()
    assert body["version"] == built.version and body["failing"] == ["bundle"]
    assert body["dependencies"]["bundle"] == f"stale: version {broken} refused (corrupt)"
    assert str(built.artifacts) not in health.text  # the path is in the log only
    recommend = gateway.get(f"/recommend/{built.users()['user_id'][0]}").json()
    assert recommend["version"] == built.version and len(recommend["items"]) == 10
    metrics = gateway.get("/metrics").text
    assert 'recsys_bundle_load_failures_total{reason="corrupt"} 1.0' in metrics
    assert f'recsys_served_version_info{{version="{built.version}"}} 1.0' in metrics

    client.set(Keys().active, built.version)  # the operator rolls back
    client.close()
    wait_for(lambda: gateway.get("/health").json()["dependencies"]["bundle"] == "ok")
