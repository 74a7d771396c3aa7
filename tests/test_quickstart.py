"""End to end: worker → publish → gateway over HTTP, as `make demo` runs it."""

import json
import math
import os
import subprocess
import sys

from shared.redis_server import free_port
from tests.conftest import REPO

TINY = """
dataset_options: {n_users: 200, n_items: 120, n_impressions: 8000}
retrieval: {trainer: {epochs: 1}}
ranking: {models: [dcn], trainer: {epochs: 1, batch_size: 1024}}
evaluate: {samples: 1}
"""


def _answers(stdout: str) -> dict[str, dict]:
    """The JSON printed under each `$ curl … 'URL'` line, by URL path."""
    out = {}
    for block in stdout.split("\n$ curl ")[1:]:
        first, _, body = block.partition("\n")
        url = first.split("'")[1]
        out[url.split("/", 3)[3]] = json.loads(body.split("\n\n")[0])
    return out


def test_quickstart_trains_publishes_serves_and_answers(tmp_path, redis_server) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    env = os.environ | {
        "RECSYS_REDIS_URL": redis_server.url,
        "RECSYS_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "RECSYS_KEY_PREFIX": "quickstart:",
    }
    port = free_port()
    out = subprocess.run(
        [sys.executable, "-m", "services.quickstart", "--config", str(config), "--port", str(port), "--no-wait"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert f"redis: using {redis_server.url}" in out.stdout
    # a first version answers the sample calls; then the full run replaces it
    assert out.stdout.index("first version: publish:") < out.stdout.index("$ curl")
    assert "(the full run) is live" in out.stdout.split("$ curl")[-1]
    answers = _answers(out.stdout)
    assert answers["health"]["status"] == "ok"
    known = next(
        v for k, v in answers.items() if k.startswith("recommend/") and "someone-new" not in k
    )
    assert known["stage"] == "rank" and not known["is_cold_start"] and len(known["items"]) == 3
    assert all(
        math.isfinite(item["score"]) and set(item["scores"]) == {"click", "add_to_cart", "purchase"}
        for item in known["items"]
    )
    cold = answers["recommend/someone-new?top_k=3"]
    assert cold["is_cold_start"] and len(cold["items"]) == 3
    rerank = answers["rerank"]
    assert "no-such-item" in rerank["unknown_items"]
