"""The live loop's speed: events in, events ingested, and what fresh events cost a request.

    apt-get install wrk
    python bench/events.py [--artifacts DIR] [--seconds 5] [--ingest 200000]

Starts its own redis-server and gateway (1 worker) on a synthetic bundle (built as in
``bench/load.py`` unless --artifacts is given), then measures, each with ``wrk -t1``:

- ``POST /events`` with batches of 100 new events (every request its own event ids;
  a tenth are clicks) at 32 connections: events accepted per second;
- ``python -m offline ingest``'s reader on the stream so filled (topped up to
  ``--ingest`` events): events written to Parquet per second;
- ``/recommend/{uid}?top_k=10`` at 1 and 32 connections for users with fresh events
  (two clicks each, newer than the bundle, posted a second before: the user tower and
  the ranker read their fresh history) against as many users without, in alternating
  rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import polars as pl
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import (  # noqa: E402
    ROOT,
    WRK_DONE,
    WRK_SCRIPT,
    Round,
    build_bundle,
    ensure_published,
    run_wrk,
    start_server,
)

from offline.ingest import Ingestor  # noqa: E402
from shared.bundle import Files  # noqa: E402
from shared.keys import Keys  # noqa: E402
from shared.redis_server import RedisServer, free_port  # noqa: E402

EVENTS_SCRIPT = r"""
local n = 0
local users = tonumber(os.getenv("BENCH_USERS"))
local items = tonumber(os.getenv("BENCH_ITEMS"))
local tag = os.getenv("BENCH_TAG")
request = function()
  n = n + 1
  local parts = {}
  for i = 1, 100 do
    local kind = (i % 10 == 0) and "click" or "impression"
    parts[i] = string.format(
      '{"event_id":"%s-%d-%d","uid":"load-%d","item_id":"i%d","type":"%s","context":{"page":"home","position":%d}}',
      tag, n, i, (n * 31 + i) % users, (n * 7 + i * 13) % items, kind, i % 10)
  end
  return wrk.format("POST", "/events", {["Content-Type"] = "application/json"},
    '{"events":[' .. table.concat(parts, ",") .. ']}')
end
"""


def _wait_idle(port: int, timeout_s: float = 30.0) -> None:
    """Until the gateway's count of warmed fresh users stops moving for a second."""

    def warmed() -> str:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        return next((line for line in text.splitlines()
                     if line.startswith("recsys_fresh_warmed_total")), "")  # fmt: skip

    last, deadline = warmed(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1.0)
        if (now := warmed()) == last:
            return
        last = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--ingest", type=int, default=200_000, help="events in the stream to ingest"
    )
    args = parser.parse_args()
    server = RedisServer().start()
    tmp = tempfile.TemporaryDirectory(prefix="recsys-bench-events-")
    folder = Path(tmp.name)
    gateway = None
    try:
        artifacts = args.artifacts or folder / "artifacts"
        if args.artifacts is None:
            artifacts.mkdir()
            build_bundle(artifacts, server.url)
        version = ensure_published(artifacts, server.url)
        users = pl.read_parquet(artifacts / version / Files.USERS)["user_id"].to_list()
        port = free_port()
        env = {"RECSYS_REDIS_URL": server.url, "RECSYS_ARTIFACTS_DIR": str(artifacts),
               "RECSYS_LOG_LEVEL": "WARNING", "RECSYS_API_PORT": str(port)}  # fmt: skip
        gateway = start_server([sys.executable, "-m", "services.gateway"], env, port)
        (folder / "events.lua").write_text(EVENTS_SCRIPT + WRK_DONE)
        (folder / "get.lua").write_text(WRK_SCRIPT + WRK_DONE)

        # 1. events in
        wrk_env = {"BENCH_USERS": str(len(users)), "BENCH_ITEMS": "800"}
        rounds = [
            run_wrk(port, folder / "events.lua", 32, args.seconds, wrk_env | {"BENCH_TAG": f"r{r}"})
            for r in range(args.rounds)
        ]
        rates = [100 * r.rps for r in rounds]
        print(f"POST /events (batches of 100, c=32): {statistics.median(rates):,.0f} events/s "
              f"(rounds {', '.join(f'{x:,.0f}' for x in rates)}), p50 "
              f"{statistics.median(r.p50_ms for r in rounds):.1f} ms, errors "
              f"{sum(r.errors for r in rounds)}", flush=True)  # fmt: skip

        # 2. ingest
        client = redis.Redis.from_url(server.url)
        stream = Keys().events
        missing = args.ingest - client.xlen(stream)
        for lo in range(0, max(missing, 0), 10_000):
            pipe = client.pipeline(transaction=False)
            for i in range(lo, min(lo + 10_000, missing)):
                event = {"event_id": f"fill-{i}", "uid": users[i % len(users)],
                         "item_id": f"i{i % 800}", "type": "impression", "ts": time.time(),
                         "context": {"page": "home", "position": i % 10}}  # fmt: skip
                pipe.xadd(stream, {"e": orjson.dumps(event)})
            pipe.execute()
        total = client.xlen(stream)
        # the clicks posted above queued warm-ups in the gateway's scoring process: let
        # them finish, as ingest runs on the worker's machine, not next to a busy gateway
        _wait_idle(port)
        started = time.perf_counter()
        with Ingestor(client, folder / "log") as ingestor:
            written = sum(w for _, w, _ in ingestor.run())
        seconds = time.perf_counter() - started
        print(f"ingest: {written:,} of {total:,} events to Parquet in {seconds:.2f} s: "
              f"{written / seconds:,.0f} events/s", flush=True)  # fmt: skip

        # 3. /recommend with and without fresh events (2 clicks each, newer than the bundle)
        fresh, stale = users[:1000], users[1000:2000]
        post = [{"event_id": f"fresh-{u}-{k}", "uid": u, "item_id": f"i{(7 * k + j) % 800}",
                 "type": "click"} for j, u in enumerate(fresh) for k in range(2)]  # fmt: skip
        for lo in range(0, len(post), 100):  # as clients send them; then a pause, as users take
            httpx.post(f"http://127.0.0.1:{port}/events", json={"events": post[lo : lo + 100]})
        time.sleep(1)
        inputs = {}
        for name, who in (("fresh", fresh), ("without", stale)):
            inputs[name] = folder / f"{name}.txt"
            inputs[name].write_text("".join(f"/recommend/{u}?top_k=10\n" for u in who))
        for c in (1, 32):
            got: dict[str, list[Round]] = {"fresh": [], "without": []}
            for _ in range(args.rounds):
                for name in got:
                    env = {"BENCH_ROUTE": "recommend", "BENCH_INPUT": str(inputs[name])}
                    got[name].append(run_wrk(port, folder / "get.lua", c, args.seconds, env))
            f, w = got["fresh"], got["without"]
            med = statistics.median
            print(f"/recommend c={c}: fresh events {med(r.rps for r in f):,.0f} req/s p50 "
                  f"{med(r.p50_ms for r in f):.2f} ms p99 {med(r.p99_ms for r in f):.2f} | without "
                  f"{med(r.rps for r in w):,.0f} req/s p50 {med(r.p50_ms for r in w):.2f} ms p99 "
                  f"{med(r.p99_ms for r in w):.2f} | p50 ratio "
                  f"{med(r.p50_ms for r in f) / med(r.p50_ms for r in w):.2f} (errors "
                  f"{sum(r.errors for r in f + w)})", flush=True)  # fmt: skip
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=30)
        server.stop()
        tmp.cleanup()


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
