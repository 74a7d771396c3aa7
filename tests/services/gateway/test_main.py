"""``python -m services.gateway``: uvicorn serves the app configured by RECSYS_* variables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.redis_server import free_port
from tests.services.conftest import BuiltBundle

REPO = Path(__file__).resolve().parents[3]


def _start(built: BuiltBundle, redis_url: str, **env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    environment = os.environ | {
        "RECSYS_REDIS_URL": redis_url,
        "RECSYS_ARTIFACTS_DIR": str(built.artifacts),
        "RECSYS_API_PORT": str(port),
        "RECSYS_LOG_LEVEL": "WARNING",
        **env,
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "services.gateway"], env=environment, cwd=REPO
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, f"the gateway exited with {process.returncode}"
        assert time.monotonic() < deadline, "the gateway did not answer within 90 s"
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def test_module_serves_the_api_and_its_docs(built: BuiltBundle, store_url: str) -> None:
    process, base = _start(built, store_url)
    try:
        health = httpx.get(f"{base}/health")
        assert health.status_code == 200 and health.json()["version"] == built.version
        assert httpx.get(f"{base}/docs").status_code == 200
        assert "/recommend/{uid}" in httpx.get(f"{base}/openapi.json").json()["paths"]
        uid = built.users()["user_id"][0]
        assert len(httpx.get(f"{base}/recommend/{uid}", params={"top_k": 3}).json()["items"]) == 3
    finally:
        process.terminate()
        # a graceful stop; uvicorn then re-raises the SIGTERM it caught
        assert process.wait(timeout=20) in (0, -signal.SIGTERM)


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            pairs = (p.split("=", 1) for p in labels.split(","))
            out.append(({k: v.strip('"') for k, v in pairs}, float(value)))
    return out


def test_several_workers_add_up_their_metrics_and_all_reload(
    built: BuiltBundle, scratch_url: str
) -> None:
    process, base = _start(built, scratch_url, RECSYS_WORKERS="2", RECSYS_RELOAD_INTERVAL_S="0.2")
    try:
        uid = built.users()["user_id"][0]
        for _ in range(40):  # a new connection each: the kernel spreads them over the workers
            assert httpx.get(f"{base}/recommend/{uid}", params={"top_k": 2}).status_code == 200

        def metrics() -> str:
            return httpx.get(f"{base}/metrics").text

        text = metrics()
        served = _samples(text, "recsys_served_version_info")
        pids = {labels["pid"] for labels, value in served if value == 1}
        assert len(pids) == 2, f"not two live workers: {served}"
        requests = _samples(text, "recsys_requests_total")
        ok = sum(
            v for labels, v in requests if labels == {"route": "/recommend/{uid}", "status": "200"}
        )
        assert ok == 40, "every worker's requests are counted, whichever worker answers /metrics"

        new = built.derive("for-workers")
        built.publish(scratch_url, new)
        deadline = time.monotonic() + 30
        while True:
            live = {
                labels["pid"]
                for labels, value in _samples(metrics(), "recsys_served_version_info")
                if value == 1 and labels["version"] == new
            }
            if live == pids:
                break
            assert time.monotonic() < deadline, f"not every worker serves {new}: {live} of {pids}"
            time.sleep(0.2)
        for _ in range(10):
            assert httpx.get(f"{base}/health").json()["version"] == new
    finally:
        process.terminate()
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_drains_then_stops(built: BuiltBundle, store_url: str, workers: str) -> None:
    process, base = _start(built, store_url, RECSYS_DRAIN_S="2", RECSYS_WORKERS=workers)
    uid = built.users()["user_id"][0]
    try:
        assert httpx.get(f"{base}/readyz").status_code == 200
        process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        deadline = stopped_at + 1.5
        while httpx.get(f"{base}/readyz").status_code != 503:  # out of the pool at once
            assert time.monotonic() < deadline, "/readyz still 200 after SIGTERM"
            time.sleep(0.05)
        for _ in range(5):  # new connections are still accepted and answered meanwhile
            assert httpx.get(f"{base}/recommend/{uid}").status_code == 200
        assert time.monotonic() - stopped_at < 2
        assert process.wait(timeout=20) in (0, -signal.SIGTERM)
        assert time.monotonic() - stopped_at >= 1.9  # it served the whole drain period
    finally:
        if process.poll() is None:
            process.kill()
