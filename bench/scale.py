"""A million items through the whole stack: ``offline run`` at scale, then the gateway.

    python bench/scale.py [--items 1000000] [--users 500000] [--impressions 20000000]
                          [--epochs 1] [--rankers dcn] [--artifacts DIR]

Generates the synthetic world at that size (``dataset_options``), trains each model
``--epochs`` with sparse embedding updates (no refit: the evaluated models are served) and runs ``python -m offline
run`` in a child process against its own redis-server, whose lists of ``index.recall_k``
items stay listpacks (``zset-max-listpack-entries``, as the README advises operators).
Prints each step's seconds and peak RSS (from the bundle's manifest: the pipeline starts
the peak afresh at every step, so the run's peak is the largest) and Redis' memory.
Then starts the gateway on the bundle and prints the seconds until ``/health`` answers,
its memory, and ``/recommend`` latency (wrk, else the Python client) at concurrency 1
and 32. ``--artifacts DIR`` keeps the bundle there (for ``bench/index.py --bundle``, or
``--serve-only``: the gateway part again on that bundle).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from load import (  # bench/, beside this script
    WRK_DONE,
    WRK_SCRIPT,
    ensure_published,
    memory,
    python_round,
    start_server,
    write_inputs,
    wrk_round,
)

from offline.index import IndexConfig
from shared.bundle import Bundle
from shared.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=500_000)
    parser.add_argument("--impressions", type=int, default=20_000_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rankers", nargs="+", default=["dcn"], choices=["dcn", "deepfm"])
    parser.add_argument("--artifacts", type=Path, help="bundles folder (default: a temporary one)")
    parser.add_argument("--seconds", type=int, default=5, help="per latency round")
    parser.add_argument(
        "--serve-only", action="store_true",
        help="skip the run: publish and serve the newest bundle of --artifacts",
    )  # fmt: skip
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="recsys-scale-")
    folder = Path(tmp.name)
    artifacts = args.artifacts or folder / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    config = {
        "dataset": "synthetic",
        "dataset_options": {
            "n_items": args.items, "n_users": args.users, "n_impressions": args.impressions
        },
        # SparseAdam on the embedding tables: a dense step would move every one of ~1.4M rows
        "retrieval": {"trainer": {"epochs": args.epochs, "sparse_embeddings": True}},
        "ranking": {
            "models": args.rankers,
            "trainer": {"epochs": args.epochs, "sparse_embeddings": True},
        },
        "serving": {"refit": False},
    }  # fmt: skip
    config_path = folder / "scale.json"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    client.config_set("zset-max-listpack-entries", IndexConfig().recall_k)
    gateway = None
    try:
        if args.serve_only:
            bundle = Bundle.open(artifacts)
            ensure_published(artifacts, server.url)
        else:
            bundle = offline_run(args, config_path, artifacts, server.url)
        print(f"redis used_memory {client.info('memory')['used_memory_human']}", flush=True)

        port = free_port()
        env = {
            "RECSYS_REDIS_URL": server.url,
            "RECSYS_ARTIFACTS_DIR": str(artifacts),
            "RECSYS_LOG_LEVEL": "WARNING",
            "RECSYS_API_PORT": str(port),
        }
        started = time.perf_counter()
        gateway = start_server([sys.executable, "-m", "services.gateway"], env, port)
        ready = time.perf_counter() - started
        print(f"\ngateway: /health ready in {ready:.1f} s; {_memory(gateway)}")
        inputs = write_inputs(folder, artifacts, bundle.version)["recommend"]
        script = folder / "bench.lua"
        script.write_text(WRK_SCRIPT + WRK_DONE)
        wrk = shutil.which("wrk")
        for c in (1, 1, 32):  # the first round warms up
            got = (
                wrk_round(port, "recommend", inputs, script, c, args.seconds)
                if wrk
                else python_round(port, "recommend", inputs, c, args.seconds)
            )
            print(f"/recommend c={c}: {got.rps:,.0f} req/s, p50 {got.p50_ms:.1f} ms, "
                  f"p99 {got.p99_ms:.1f} ms, {got.errors} errors", flush=True)  # fmt: skip
        print(f"gateway after the load: {_memory(gateway)}")
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait()
        client.close()
        server.stop()
        tmp.cleanup()


def offline_run(
    args: argparse.Namespace, config_path: Path, artifacts: Path, redis_url: str
) -> Bundle:
    print(f"offline run: {args.items:,} items × {args.users:,} users × "
          f"{args.impressions:,} impressions, {args.epochs} epoch(s)", flush=True)  # fmt: skip
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "offline", "run", "--config", str(config_path),
         "--artifacts", str(artifacts), "--redis-url", redis_url],
        cwd=ROOT, check=False,
    )  # fmt: skip
    total = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"offline run failed (exit code {run.returncode})")
    bundle = Bundle.open(artifacts)
    steps = bundle.manifest()["steps"]
    peak = max(step["peak_rss_mib"] for step in steps.values())
    print("\n| step | seconds | peak RSS (GiB) |\n|---|---:|---:|")
    for name, step in steps.items():
        print(f"| {name} | {step['seconds']:.0f} | {step['peak_rss_mib'] / 1024:.2f} |")
    print(f"| offline run | {total:.0f} | {peak / 1024:.2f} |")
    return bundle


def _memory(gateway: subprocess.Popen[bytes]) -> str:
    """RSS and PSS (shared pages split among the processes mapping them) of each process."""
    each = memory(gateway)
    pss = sum(p for _, _, p in each) / 1024
    rss = ", ".join(f"{r / 1024:.2f}" for _, r, _ in each)
    return f"{len(each)} process(es), RSS {rss} GiB, PSS {pss:.2f} GiB in all"


if __name__ == "__main__":
    main()
