"""The gateway under load while its dependencies fail, loopback only, bounded in time.

    python bench/chaos.py [--artifacts DIR] [--seconds 3] [--concurrency 8] [--markdown]

Starts its own redis-server on a free port and a gateway (``python -m services.gateway``)
on a synthetic bundle (built briefly unless --artifacts is given), then keeps
``--concurrency`` clients asking ``/recommend`` for random known users while, one case
after the other, it:

- ``baseline``: changes nothing;
- ``redis killed``: stops Redis, restarts it empty and publishes again;
- ``redis paused``: ``CLIENT PAUSE`` for 2 s (every command stalls);
- ``publish``: publishes a new version (the gateway hot-swaps to it);
- ``publish killed``: SIGKILLs a publish after its first batch;
- ``NaN bundle``, ``flipped bytes``: names as active a version whose weights are NaN, or
  one with 64 flipped bytes in its weights (re-hashed in the manifest), then rolls back;
- ``SIGTERM``: stops the gateway (drain, then connections are refused).

Per case it prints the answers by status class, connection errors, degraded answers,
the versions that answered, and the seconds from the fault's end (Redis back, the
publish done) to the first answer that is not degraded.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import polars as pl
import redis
import safetensors.torch
from load import build_bundle, start_server  # bench/, beside this script

from offline import pipeline
from offline.config import load_config
from shared.bundle import Bundle, Files
from shared.keys import Keys
from shared.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Answer:
    at: float
    status: int  # 0: connection error
    degraded: bool = False
    version: str | None = None


@dataclass
class Case:
    name: str
    started: float
    fault_over: float | None = None  # when the dependency was back
    note: str = ""
    answers: list[Answer] = field(default_factory=list)

    def row(self) -> list[str]:
        a = self.answers
        by = {k: sum(1 for x in a if lo <= x.status < hi) for k, (lo, hi) in
              {"2xx": (200, 300), "4xx": (400, 500), "5xx": (500, 600)}.items()}  # fmt: skip
        conn = sum(1 for x in a if x.status == 0)
        degraded = sum(1 for x in a if x.degraded)
        recovery = "–"
        if self.fault_over is not None:
            fine = [
                x.at for x in a if x.at >= self.fault_over and x.status == 200 and not x.degraded
            ]
            recovery = f"{min(fine) - self.fault_over:.2f}" if fine else "not within the case"
        versions = len({x.version for x in a if x.version})
        return [self.name, str(len(a)), str(by["2xx"]), str(by["4xx"]), str(by["5xx"]),
                str(conn), str(degraded), str(versions), recovery, self.note]  # fmt: skip


HEADER = ["case", "requests", "2xx", "4xx", "5xx", "conn. errors", "degraded", "versions",
          "recovery s", "note"]  # fmt: skip


class Load:
    """``concurrency`` clients asking /recommend in a loop; answers go to the current case."""

    def __init__(self, base: str, uids: list[str], concurrency: int) -> None:
        self.base, self.uids, self.concurrency = base, uids, concurrency
        self.case: Case | None = None
        self.running = True

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base, timeout=5) as client:
            await asyncio.gather(*(self._client(client) for _ in range(self.concurrency)))

    async def _client(self, client: httpx.AsyncClient) -> None:
        rng = random.Random()
        while self.running:
            uid = rng.choice(self.uids)
            try:
                r = await client.get(f"/recommend/{uid}", params={"top_k": 10})
                body = (
                    r.json()
                    if r.headers.get("content-type", "").startswith("application/json")
                    else {}
                )
                answer = Answer(
                    time.monotonic(), r.status_code, bool(body.get("degraded")), body.get("version")
                )
            except httpx.HTTPError:  # refused, reset, timed out
                answer = Answer(time.monotonic(), 0)
                await asyncio.sleep(0.05)
            if self.case is not None:
                self.case.answers.append(answer)


def _publish(artifacts: Path, redis_url: str, version: str) -> None:
    ctx = pipeline.Context(config=load_config(None), artifacts=artifacts, redis_url=redis_url,
                           version=version)  # fmt: skip
    for _ in pipeline.run_step("publish", ctx):
        pass


def _derive(artifacts: Path, version: str, name: str, change: Callable[[Path], None] | None) -> str:
    """A copy of ``version`` as a new version (re-hashed after ``change``)."""
    new = f"{version}-{name}"
    root = artifacts / new
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(artifacts / version, root)
    bundle = Bundle(root)
    bundle.update_manifest(version=new)
    if change is not None:
        change(root)
        bundle.add(Files.RANKER.format(kind="dcn") + ".safetensors")
    return new


def _flipped(root: Path) -> None:
    path = root / (Files.RANKER.format(kind="dcn") + ".safetensors")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # inside the tensors
    data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def _nan(root: Path) -> None:
    path = root / (Files.RANKER.format(kind="dcn") + ".safetensors")
    tensors = safetensors.torch.load_file(path)
    for tensor in tensors.values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    safetensors.torch.save_file(tensors, path)


_KILLED_PUBLISH = """
import numpy as np, redis, sys
from offline.publish import PublishConfig, publish
from shared.keys import Keys
users = [f"u{u}" for u in range(300_000)]
recall = np.tile(np.arange(1, 101), (len(users), 1))
ids = np.array([""] + [f"i{i}" for i in range(1, 101)], dtype=object)
publish(redis.Redis.from_url(sys.argv[1]), Keys(), "doomed", users, recall, ids,
        np.arange(1, 3), np.ones(2), {}, PublishConfig(batch_size=50))
"""


async def chaos(args: argparse.Namespace, artifacts: Path, server: RedisServer) -> list[Case]:
    url = server.url
    version = Bundle.open(artifacts).version
    _publish(artifacts, url, version)
    port = free_port()
    env = {"RECSYS_REDIS_URL": url, "RECSYS_ARTIFACTS_DIR": str(artifacts),
           "RECSYS_API_PORT": str(port), "RECSYS_LOG_LEVEL": "ERROR", "RECSYS_RELOAD_INTERVAL_S": "0.5",
           "RECSYS_DRAIN_S": "2"}  # fmt: skip
    gateway = start_server([sys.executable, "-m", "services.gateway"], env, port)
    uids = pl.read_parquet(artifacts / version / Files.USERS)["user_id"].cast(str).to_list()
    load = Load(f"http://127.0.0.1:{port}", uids, args.concurrency)
    runner = asyncio.create_task(load.run())
    client = redis.Redis.from_url(url)
    cases: list[Case] = []
    pause = asyncio.sleep

    def begin(name: str) -> Case:
        case = Case(name, time.monotonic())
        cases.append(case)
        load.case = case
        print(f"case: {name}", flush=True)
        return case

    try:
        await pause(1)  # warm
        begin("baseline")
        await pause(args.seconds)

        case = begin("redis killed")
        await pause(1)
        server.stop()
        await pause(args.seconds)
        server.start()
        await asyncio.to_thread(_publish, artifacts, url, version)
        case.fault_over = time.monotonic()
        case.note = "restarted empty, then published again"
        client = redis.Redis.from_url(url)
        await pause(args.seconds)

        case = begin("redis paused")
        await pause(1)
        client.execute_command("CLIENT", "PAUSE", 2000, "ALL")
        await pause(2.0)
        case.fault_over = time.monotonic()
        case.note = "CLIENT PAUSE 2 s"
        await pause(args.seconds)

        case = begin("publish")
        new = _derive(artifacts, version, "republished", None)
        await asyncio.to_thread(_publish, artifacts, url, new)
        case.fault_over = time.monotonic()
        await pause(args.seconds)
        case.note = f"active → {new[-12:]}"

        case = begin("publish killed")
        killer = subprocess.Popen([sys.executable, "-c", _KILLED_PUBLISH, url], cwd=ROOT)
        deadline = time.monotonic() + 30
        while not client.exists(Keys().recall("doomed", "u0")) and time.monotonic() < deadline:
            await pause(0.01)
        killer.kill()
        killer.wait()
        case.fault_over = time.monotonic()
        left = sum(1 for k in client.scan_iter(match=Keys().version_pattern("doomed"), count=1000)
                   if client.ttl(k) < 0)  # fmt: skip
        case.note = f"active {'unchanged' if client.get(Keys().active).decode() == new else 'CHANGED'}; {left} keys without TTL"
        await pause(args.seconds)

        for name, change in (("NaN bundle", _nan), ("flipped bytes", _flipped)):
            case = begin(name)
            broken = _derive(artifacts, version, change.__name__.strip("_"), change)
            client.set(Keys().active, broken)
            await pause(args.seconds)
            health = httpx.get(f"http://127.0.0.1:{port}/health").json()
            client.set(Keys().active, new)  # the operator rolls back
            case.fault_over = time.monotonic()
            state = health["dependencies"]["bundle"].removeprefix(f"stale: version {broken} ")
            case.note = f"{state}; {health['version'][-12:]} served meanwhile"
            await pause(args.seconds)

        case = begin("SIGTERM")
        gateway.send_signal(signal.SIGTERM)
        drain_started = time.monotonic()
        while gateway.poll() is None and time.monotonic() - drain_started < 20:
            await pause(0.1)
        served = [a for a in case.answers if a.at >= drain_started and a.status == 200]
        last = max((a.at for a in served), default=drain_started)
        case.note = f"answered {last - drain_started:.1f} s into the 2 s drain, then stopped"
        await pause(1)
    finally:
        load.running = False
        await asyncio.wait({runner}, timeout=10)
        if gateway.poll() is None:
            gateway.kill()
        client.close()
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, help="a bundles folder (default: build one)")
    parser.add_argument("--seconds", type=float, default=3.0, help="load per case phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="recsys-chaos-"))
    server = RedisServer().start()
    try:
        artifacts = folder / "artifacts"
        if args.artifacts:
            shutil.copytree(args.artifacts, artifacts, ignore=shutil.ignore_patterns(".staging-*"))
        else:
            artifacts.mkdir()
            build_bundle(artifacts, server.url)
        started = time.monotonic()
        cases = asyncio.run(chaos(args, artifacts, server))
        print(f"\n{len(cases)} cases in {time.monotonic() - started:.0f} s\n")
        rows = [c.row() for c in cases]
        if args.markdown:
            print("| " + " | ".join(HEADER) + " |")
            print("|" + " --- |" * len(HEADER))
            for row in rows:
                print("| " + " | ".join(row) + " |")
        else:
            widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
            for row in [HEADER, *rows]:
                print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
