"""Gateway serving speed against the floor, measured side by side in one run.

    apt-get install wrk      # the load generator (Debian package); else a slower Python client
    python bench/load.py [--artifacts DIR] [--redis-url URL] [--workers 1 2]
                         [--concurrency 1 32] [--routes recall recommend rerank]
                         [--rounds 3] [--seconds 4] [--floor-corked] [--markdown]

Starts its own redis-server on a free port unless --redis-url is given, and builds a
synthetic bundle (the default data's shapes, briefly trained) unless --artifacts is
given, publishing its newest bundle when Redis does not serve it yet. For each worker
count it starts, with the same uvicorn settings, the gateway (``python -m
services.gateway``, ``RECSYS_WORKERS=N``) and the floor (``bench/floor.py``: bare
FastAPI, one ZREVRANGE of the same recall lists, JSON of the first ``top_k`` ids),
warms both up, then loads them in alternating rounds (floor, gateway, floor, …) so
that other load on the machine hits both alike. Routes: ``/recall/{uid}?top_k=50``,
``/recommend/{uid}?top_k=10`` (ranking ``RECSYS_RANK_CANDIDATES`` = 100 candidates)
and ``POST /rerank`` of 100 items, random known users. It prints the median req/s,
p50 and p99 of each and the gateway/floor ratio, and the gateway's memory per worker.
The floor runs on stock uvicorn; ``--floor-corked`` gives it the gateway's one-write
responses (``services.gateway.server.CorkedProtocol``), so that the ratio measures the
gateway's app alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
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
# the synthetic default's users, items and features; fewer impressions and epochs, since
# serving speed depends on the shapes, not on how well the models learned
BUNDLE_CONFIG = {
    "dataset_options": {"n_impressions": 60_000},
    "retrieval": {"trainer": {"epochs": 1}},
    "ranking": {"models": ["dcn"], "trainer": {"epochs": 1}},
}
ROUTES = {
    "recall": "/recall/{uid}?top_k=50",
    "recommend": "/recommend/{uid}?top_k=10",
    "rerank": "/rerank",
}
RERANK_ITEMS = 100

WRK_SCRIPT = r"""
local route = os.getenv("BENCH_ROUTE")
local lines = {}
for line in io.lines(os.getenv("BENCH_INPUT")) do lines[#lines + 1] = line end
local headers = {["Content-Type"] = "application/json"}
local n = 0
request = function()
  n = n + 1
  local line = lines[(n * 7919) % #lines + 1]
  if route == "rerank" then return wrk.format("POST", "/rerank", headers, line) end
  return wrk.format("GET", line)
end
"""
WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %.1f %.1f\n", summary.requests, summary.duration,
    e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Round:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


# --- set-up -------------------------------------------------------------------------------
def build_bundle(artifacts: Path, redis_url: str) -> None:
    print(f"building a synthetic bundle in {artifacts} …", flush=True)
    config_path = artifacts / "bench-config.json"
    config_path.write_text(json.dumps(BUNDLE_CONFIG))  # JSON is YAML
    ctx = pipeline.Context(
        config=load_config(config_path), artifacts=artifacts, redis_url=redis_url
    )
    for step in ("etl", "train-retrieval", "train-ranking", "index", "export", "publish"):
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


def write_inputs(folder: Path, artifacts: Path, version: str) -> dict[str, Path]:
    """One request per line for each route: paths of random known users, rerank bodies."""
    root = artifacts / version
    uids = pl.read_parquet(root / Files.USERS, columns=["user_id"])["user_id"].to_list()
    items = pl.read_parquet(root / Files.ITEMS, columns=["item_id"])["item_id"].to_list()
    rng = random.Random(0)
    rng.shuffle(uids)
    paths = {}
    for name, template in ROUTES.items():
        if name == "rerank":
            lines = [
                json.dumps({"uid": uid, "items": rng.sample(items, min(RERANK_ITEMS, len(items)))})
                for uid in uids[:500]
            ]
        else:
            lines = [template.format(uid=urllib.parse.quote(str(u), safe="")) for u in uids]
        paths[name] = folder / f"{name}.txt"
        paths[name].write_text("\n".join(lines) + "\n")
    return paths


def start_server(command: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, env=os.environ | env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{command[2]} exited with code {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit(f"{command} did not become healthy within 120 s")


def servers(
    artifacts: Path, redis_url: str, workers: int, floor_corked: bool = False
) -> tuple[dict[str, int], list[subprocess.Popen[bytes]]]:
    """Start the floor and the gateway with ``workers`` processes each; their ports."""
    base = {
        "RECSYS_REDIS_URL": redis_url,
        "RECSYS_ARTIFACTS_DIR": str(artifacts),
        "RECSYS_LOG_LEVEL": "WARNING",
        "RECSYS_WORKERS": str(workers),
    }
    ports = {"floor": free_port(), "gateway": free_port()}
    uvicorn = ["--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"]
    floor = [sys.executable, "-m", "uvicorn", "--app-dir", "bench", "floor:create_app",
             "--factory", "--port", str(ports["floor"]), "--workers", str(workers), *uvicorn]  # fmt: skip
    if floor_corked:
        floor += ["--http", "services.gateway.server:CorkedProtocol"]
    processes = [start_server(floor, base, ports["floor"])]
    gateway_env = base | {"RECSYS_API_PORT": str(ports["gateway"])}
    processes.append(
        start_server([sys.executable, "-m", "services.gateway"], gateway_env, ports["gateway"])
    )
    return ports, processes


# --- load ---------------------------------------------------------------------------------
def wrk_round(port: int, route: str, inputs: Path, script: Path, c: int, seconds: float) -> Round:
    return run_wrk(port, script, c, seconds, {"BENCH_ROUTE": route, "BENCH_INPUT": str(inputs)})


def run_wrk(port: int, script: Path, c: int, seconds: float, env: dict[str, str]) -> Round:
    """One ``wrk -t1`` round of ``script`` (a request function followed by :data:`WRK_DONE`)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{c}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(script),
         f"http://127.0.0.1:{port}"],
        env=os.environ | env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    requests, micros, status, socket, p50, p99 = line.split()[1:]
    return Round(
        int(requests),
        int(micros) / 1e6,
        int(status) + int(socket),
        float(p50) / 1e3,
        float(p99) / 1e3,
    )


def python_round(port: int, route: str, inputs: Path, c: int, seconds: float) -> Round:
    """The fallback client (httpx): it costs more CPU per request than the servers do."""
    lines = inputs.read_text().splitlines()

    async def go() -> Round:
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + seconds
        limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=5
        ) as client:

            async def worker(seed: int) -> None:
                nonlocal errors
                rng = random.Random(seed)
                while time.perf_counter() < deadline:
                    line = rng.choice(lines)
                    t0 = time.perf_counter()
                    try:
                        if route == "rerank":
                            r = await client.post("/rerank", content=line)
                        else:
                            r = await client.get(line)
                        errors += r.status_code != 200
                    except httpx.HTTPError:
                        errors += 1
                    latencies.append(time.perf_counter() - t0)

            started = time.perf_counter()
            await asyncio.gather(*(worker(i) for i in range(c)))
            elapsed = time.perf_counter() - started
        ms = np.array(latencies) * 1000
        return Round(len(ms), elapsed, errors, *np.percentile(ms, [50, 99]))

    return asyncio.run(go())


def memory(supervisor: subprocess.Popen[bytes]) -> list[tuple[int, float, float]]:
    """(pid, RSS, PSS in MiB) of every serving process: the gateway's workers and their
    scoring processes (multiprocessing's small resource tracker left out). PSS splits
    shared pages (the memory-mapped bundle arrays, the libraries) among the processes
    that map them, so PSS adds up to what the tree really holds."""
    out, todo = [], [supervisor.pid]
    while todo:
        pid = todo.pop()
        try:
            # a child started from a thread is listed under that thread's task
            tasks = Path(f"/proc/{pid}/task").glob("*/children")
            children = [c for t in tasks for c in t.read_text().split()]
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
        except OSError:
            continue
        todo += [int(c) for c in children]
        fields = dict(line.split(":", 1) for line in rollup)
        if b"resource_tracker" in command or "Pss" not in fields:
            continue
        kib = (int(fields[k].split()[0]) for k in ("Rss", "Pss"))
        out.append((pid, *(v / 1024 for v in kib)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, help="bundles folder (default: build one)")
    parser.add_argument("--redis-url", help="default: start a redis-server on a free port")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--routes", nargs="+", default=list(ROUTES), choices=list(ROUTES))
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per server")
    parser.add_argument("--seconds", type=int, default=4, help="seconds per round")
    parser.add_argument(
        "--floor-corked",
        action="store_true",
        help="the floor with the gateway's one-write responses",
    )
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("warning: wrk not found (apt-get install wrk); the Python client measures mostly itself",
              file=sys.stderr)  # fmt: skip

    server = None if args.redis_url else RedisServer().start()
    redis_url = args.redis_url or server.url
    tmp = tempfile.TemporaryDirectory(prefix="recsys-bench-")
    folder = Path(tmp.name)
    rows: list[tuple] = []
    try:
        artifacts = args.artifacts
        if artifacts is None:
            artifacts = folder / "artifacts"
            artifacts.mkdir()
            build_bundle(artifacts, redis_url)
        version = ensure_published(artifacts, redis_url)
        inputs = write_inputs(folder, artifacts, version)
        script = folder / "bench.lua"
        script.write_text(WRK_SCRIPT + WRK_DONE)

        def one(port: int, route: str, c: int, seconds: float) -> Round:
            if wrk:
                return wrk_round(port, route, inputs[route], script, c, seconds)
            return python_round(port, route, inputs[route], c, seconds)

        for workers in args.workers:
            ports, processes = servers(artifacts, redis_url, workers, args.floor_corked)
            try:
                for route in args.routes:  # warm-up: connections, caches, allocator
                    for port in ports.values():
                        one(port, route, max(args.concurrency), 1.0)
                for route in args.routes:
                    for c in args.concurrency:
                        got: dict[str, list[Round]] = {"floor": [], "gateway": []}
                        for _ in range(args.rounds):
                            for name, port in ports.items():
                                got[name].append(one(port, route, c, args.seconds))
                        rows.append((workers, route, c, got))
                        print_row(rows[-1])
                tree = memory(processes[1])
                print(
                    f"gateway, {workers} worker(s): {len(tree)} processes, RSS / PSS (MiB) "
                    + ", ".join(f"{r:.0f} / {p:.0f}" for _, r, p in tree)
                    + f"; PSS in all {sum(p for _, _, p in tree):.0f} MiB",
                    flush=True,
                )
            finally:
                for p in processes:
                    p.terminate()
                for p in processes:
                    p.wait(timeout=30)
        print_summary(rows, args)
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()


def _med(rounds: list[Round], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in rounds)


def print_row(row: tuple) -> None:
    workers, route, c, got = row
    f, g = got["floor"], got["gateway"]
    errors = sum(r.errors for r in f + g)
    print(
        f"workers {workers}  {route:<9}  c={c:<3}  floor {_med(f, 'rps'):>7,.0f} req/s "
        f"p50 {_med(f, 'p50_ms'):.2f} p99 {_med(f, 'p99_ms'):.2f} ms | gateway "
        f"{_med(g, 'rps'):>7,.0f} req/s p50 {_med(g, 'p50_ms'):.2f} p99 {_med(g, 'p99_ms'):.2f} ms"
        f" | ratio {_med(g, 'rps') / _med(f, 'rps'):.2f}  (rounds: "
        + " ".join(f"{b.rps / a.rps:.2f}" for a, b in zip(f, g, strict=True))
        + f"; errors {errors})",
        flush=True,
    )


def print_summary(rows: list[tuple], args: argparse.Namespace) -> None:
    if not args.markdown:
        return
    print(
        f"\n{args.rounds} alternating rounds of {args.seconds:g} s each, medians; "
        f"{os.cpu_count()} CPUs shared with the client\n"
    )
    print(
        "| workers | route | c | floor req/s | gateway req/s | ratio | floor p50 / p99 ms | gateway p50 / p99 ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for workers, route, c, got in rows:
        f, g = got["floor"], got["gateway"]
        print(
            f"| {workers} | {ROUTES[route].split('?')[0].replace('{uid}', '…')} "
            f"{'(' + ROUTES[route].split('?')[1] + ')' if '?' in ROUTES[route] else f'({RERANK_ITEMS} items)'} "
            f"| {c} | {_med(f, 'rps'):,.0f} | {_med(g, 'rps'):,.0f} | {_med(g, 'rps') / _med(f, 'rps'):.2f} "
            f"| {_med(f, 'p50_ms'):.2f} / {_med(f, 'p99_ms'):.1f} | {_med(g, 'p50_ms'):.2f} / {_med(g, 'p99_ms'):.1f} |"
        )


if __name__ == "__main__":
    main()
