"""Gateway throughput: /recommend (recall + 100-candidate DCN-v2 ranking) vs /recall alone.

    python bench/load.py [--artifacts DIR] [--redis-url URL] [--concurrency 64]
                         [--requests 20000] [--seconds 15]

Starts its own redis-server on a free port unless --redis-url is given, and builds a
small synthetic bundle in a temporary folder unless --artifacts is given (publishing
its newest bundle to that Redis when Redis does not serve it yet). Then it starts the
gateway (``python -m services.gateway``, uvicorn, one process) on a free loopback port
and drives it with ``httpx.AsyncClient``: a warm-up, then ``/recall/{uid}`` and
``/recommend/{uid}?top_k=10`` in turn, each phase bounded by --requests and
--seconds. It prints throughput and p50/p99 latency of each endpoint and the ratio
recommend/recall (the bar: ≥ 0.7).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import redis

from offline import pipeline
from offline.config import load_config
from shared.bundle import Bundle, Files
from shared.keys import Keys
from shared.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
BUNDLE_CONFIG = {
    "dataset_options": {"n_users": 2000, "n_items": 1000, "n_impressions": 40000},
    "retrieval": {"trainer": {"epochs": 1}},
    "ranking": {"models": ["dcn"], "trainer": {"epochs": 1}},
}


def build_bundle(artifacts: Path, redis_url: str) -> None:
    print(f"building a synthetic bundle in {artifacts} …", flush=True)
    config_path = artifacts / "bench-config.json"
    config_path.write_text(json.dumps(BUNDLE_CONFIG))  # JSON is YAML
    ctx = pipeline.Context(
        config=load_config(config_path), artifacts=artifacts, redis_url=redis_url
    )
    for step in ("etl", "train-retrieval", "train-ranking", "index", "publish"):
        for line in pipeline.run_step(step, ctx):
            print(f"  {line}", flush=True)


def ensure_published(artifacts: Path, redis_url: str) -> str:
    version = Bundle.open(artifacts).version
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        active = client.get(Keys().active)
    finally:
        client.close()
    if active != version:
        ctx = pipeline.Context(
            config=load_config(None), artifacts=artifacts, redis_url=redis_url, version=version
        )
        for line in pipeline.run_step("publish", ctx):
            print(f"  {line}", flush=True)
    return version


def start_gateway(
    artifacts: Path, redis_url: str, port: int, args: argparse.Namespace
) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "RECSYS_REDIS_URL": redis_url,
        "RECSYS_ARTIFACTS_DIR": str(artifacts),
        "RECSYS_API_HOST": "127.0.0.1",
        "RECSYS_API_PORT": str(port),
        "RECSYS_RANKER": "dcn",
        "RECSYS_RANK_CANDIDATES": str(args.candidates),
        "RECSYS_MAX_BATCH": str(args.max_batch),
        "RECSYS_BATCH_WAIT_MS": str(args.batch_wait_ms),
        "RECSYS_TORCH_THREADS": str(args.torch_threads),
        "RECSYS_SCORE_IN_THREAD": str(not args.score_on_loop).lower(),
        "RECSYS_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "services.gateway"], env=env, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited with code {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("the gateway did not become healthy within 60 s")


async def drive(
    client: httpx.AsyncClient,
    path: str,
    uids: list[str],
    concurrency: int,
    requests: int,
    seconds: float,
) -> tuple[list[float], int, float]:
    """Closed-loop load: ``concurrency`` workers until ``requests`` are done or time is up.

    Returns:
        (latencies in seconds, failed requests, elapsed seconds)
    """
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + seconds
    rng = random.Random(len(path))

    async def worker() -> None:
        nonlocal errors, issued
        while issued < requests and time.perf_counter() < deadline:
            issued += 1
            url = path.format(uid=rng.choice(uids))
            t0 = time.perf_counter()
            try:
                response = await client.get(url)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t0)
            errors += not ok

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


def _stage_means(metrics_text: str) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("recsys_scorer_batch_size_sum "):
            sums["requests per batch"] = float(line.split()[1]) / 1000
        if line.startswith("recsys_scorer_batch_size_count "):
            counts["requests per batch"] = float(line.split()[1])
        for suffix, into in (("_sum", sums), ("_count", counts)):
            prefix = f'recsys_stage_latency_seconds{suffix}{{stage="'
            if line.startswith(prefix):
                stage = line[len(prefix) :].split('"', 1)[0]
                into[stage] = float(line.rsplit(" ", 1)[1])
    return {s: 1000 * sums[s] / counts[s] for s in sums if counts.get(s)}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(port: int, pid: int, uids: list[str], args: argparse.Namespace) -> None:
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=10
    ) as client:
        routes = {"recall": "/recall/{uid}", "recommend": f"/recommend/{{uid}}?top_k={args.top_k}"}
        for path in routes.values():  # warm-up: connections, caches, allocator
            await drive(client, path, uids, args.concurrency, args.requests // 10, 2.0)
        # alternate short rounds so that other load on the machine hits both endpoints alike
        totals = {
            name: {"lat": [], "errors": 0, "seconds": 0.0, "cpu": 0.0, "client_cpu": 0.0}
            for name in routes
        }
        for _ in range(args.rounds):
            for name, path in routes.items():
                cpu, client_cpu = _cpu_seconds(pid), time.process_time()
                lat, errors, seconds = await drive(
                    client,
                    path,
                    uids,
                    args.concurrency,
                    args.requests // args.rounds,
                    args.seconds / args.rounds,
                )
                t = totals[name]
                t["lat"] += lat
                t["errors"] += errors
                t["seconds"] += seconds
                t["cpu"] += _cpu_seconds(pid) - cpu
                t["client_cpu"] += time.process_time() - client_cpu
        stages = _stage_means((await client.get("/metrics")).text)
    print(
        f"\nconcurrency {args.concurrency}, {len(uids)} users, /recommend ranks "
        f"{args.candidates} candidates with DCN-v2 (max_batch {args.max_batch}, "
        f"batch_wait_ms {args.batch_wait_ms}, torch_threads {args.torch_threads}, "
        f"scoring on {'the event loop' if args.score_on_loop else 'a model thread'}), "
        f"{args.rounds} alternating rounds, {os.cpu_count()} CPUs"
    )
    print(
        f"{'endpoint':<12}{'requests':>10}{'errors':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'gateway CPU ms/req':>20}{'client CPU ms/req':>19}"
    )
    rps = {}
    for name, t in totals.items():
        lat = np.array(t["lat"]) * 1000
        rps[name] = len(lat) / t["seconds"]
        print(
            f"{'/' + name:<12}{len(lat):>10,}{t['errors']:>8}{rps[name]:>10,.0f}"
            f"{np.percentile(lat, 50):>9.2f}{np.percentile(lat, 99):>9.2f}{1000 * t['cpu'] / len(lat):>20.3f}"
            f"{1000 * t['client_cpu'] / len(lat):>19.3f}"
        )
    ratio = rps["recommend"] / rps["recall"]
    print(
        f"ratio recommend/recall throughput: {ratio:.2f} (bar >= 0.70: {'met' if ratio >= 0.7 else 'NOT met'})"
    )
    print(
        "gateway stage means (ms; features/scoring are per batch): "
        + ", ".join(f"{k} {v:.3f}" for k, v in stages.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--artifacts", type=Path, help="bundles folder (default: build a synthetic one)"
    )
    parser.add_argument("--redis-url", help="default: start a redis-server on a free port")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20_000, help="most requests per endpoint")
    parser.add_argument("--seconds", type=float, default=15.0, help="most seconds per endpoint")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per endpoint")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=1.0)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument(
        "--score-on-loop",
        action="store_true",
        help="RECSYS_SCORE_IN_THREAD=false: score on the event loop",
    )
    args = parser.parse_args()

    server = None if args.redis_url else RedisServer().start()
    redis_url = args.redis_url or server.url
    tmp = None
    gateway = None
    try:
        artifacts = args.artifacts
        if artifacts is None:
            tmp = tempfile.TemporaryDirectory(prefix="recsys-bench-")
            artifacts = Path(tmp.name)
            build_bundle(artifacts, redis_url)
        version = ensure_published(artifacts, redis_url)
        uids = pl.read_parquet(artifacts / version / Files.USERS, columns=["user_id"])[
            "user_id"
        ].to_list()
        port = free_port()
        gateway = start_gateway(artifacts, redis_url, port, args)
        asyncio.run(run(port, gateway.pid, uids, args))
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=15)
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
