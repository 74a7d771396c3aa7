"""``python -m services.gateway``: uvicorn serves the app configured by RECSYS_* variables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shared.redis_server import free_port
from tests.services.conftest import BuiltBundle

REPO = Path(__file__).resolve().parents[3]


def test_module_serves_the_api_and_its_docs(built: BuiltBundle, store_url: str) -> None:
    port = free_port()
    env = os.environ | {
        "RECSYS_REDIS_URL": store_url,
        "RECSYS_ARTIFACTS_DIR": str(built.artifacts),
        "RECSYS_API_PORT": str(port),
        "RECSYS_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "services.gateway"], env=env, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the gateway exited with {process.returncode}"
            assert time.monotonic() < deadline, "the gateway did not answer within 60 s"
            try:
                health = httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert health.status_code == 200 and health.json()["version"] == built.version
        assert httpx.get(f"{base}/docs").status_code == 200
        assert "/recommend/{uid}" in httpx.get(f"{base}/openapi.json").json()["paths"]
        uid = built.users()["user_id"][0]
        assert len(httpx.get(f"{base}/recommend/{uid}", params={"top_k": 3}).json()["items"]) == 3
    finally:
        process.terminate()
        # a graceful stop; uvicorn then re-raises the SIGTERM it caught
        assert process.wait(timeout=20) in (0, -signal.SIGTERM)
