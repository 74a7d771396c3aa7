"""``python -m offline <step>``: the worker's command line.

Steps: etl, train-retrieval, train-ranking, index, export, evaluate, publish, and run
(all of them in order); ``config`` prints the effective config (defaults, the file,
the flags) as YAML; ``ingest`` writes the gateway's event stream into the event log
(:mod:`offline.ingest`); ``simulate`` replays the synthetic world's users against a
running gateway (:mod:`offline.simulate`). Errors end with one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from offline import pipeline
from offline.config import load_config
from shared.errors import ConfigError, DataError, RecsysError, StoreError
from shared.settings import Settings

__all__ = ["main"]

EXIT_CODES: dict[type[RecsysError], int] = {DataError: 2, ConfigError: 2, StoreError: 3}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m offline", description=__doc__.splitlines()[0])
    parser.add_argument(
        "step", choices=[*pipeline.STEPS, "config", "ingest", "simulate"], help="what to run"
    )
    parser.add_argument("--dataset", help="source name (default: synthetic)")
    parser.add_argument("--data-dir", type=Path, help="folder holding the source's files")
    parser.add_argument(
        "--config", type=Path, help="YAML config (sections: etl, retrieval, ranking, …)"
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        help="bundles folder (default: $RECSYS_ARTIFACTS_DIR or artifacts/)",
    )
    parser.add_argument("--redis-url", help="Redis to publish to (default: $RECSYS_REDIS_URL)")
    parser.add_argument(
        "--version", dest="bundle_version", help="bundle to work on (default: the latest)"
    )
    parser.add_argument(
        "--quick-first",
        action="store_true",
        help="run: publish a version trained one epoch first (the two-tower and the "
        "$RECSYS_RANKER ranker), then the full run replaces it",
    )
    parser.add_argument(
        "--events-dir", type=Path, help="ingest: the event log (default: $RECSYS_EVENTS_DIR)"
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="ingest: keep reading new events (else drain and stop)",
    )
    parser.add_argument(
        "--gateway",
        help="simulate: the gateway's base URL (default: http://127.0.0.1:$RECSYS_API_PORT)",
    )
    parser.add_argument("--visits", type=int, default=1000, help="simulate: how many visits")
    parser.add_argument("--seed", type=int, default=1, help="simulate: the visits' random seed")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="training steps: continue from the bundle's checkpoints "
        "(trainer.checkpoint_every) instead of starting afresh",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _ingest(args: argparse.Namespace, settings: Settings) -> Iterator[str]:
    import redis  # noqa: PLC0415

    from offline.ingest import Ingestor  # noqa: PLC0415
    from shared.store import connect  # noqa: PLC0415

    folder = args.events_dir or settings.events_dir
    client = connect(args.redis_url or settings.redis_url, settings.redis_cluster)
    try:
        read = written = 0
        started = time.perf_counter()
        with Ingestor(client, folder, key_prefix=settings.key_prefix) as ingestor:
            for n, w, seconds in ingestor.run(follow=args.follow):
                read, written = read + n, written + w
                yield f"ingest: {n} read, {w} written in {seconds:.2f} s"
        total = time.perf_counter() - started
        yield (
            f"ingest: {read} events read, {written} written to {folder} in {total:.1f} s "
            f"({read / max(total, 1e-9):,.0f} events/s)"
        )
    except redis.RedisError as e:
        raise StoreError(f"redis: {type(e).__name__}: {e}") from None
    finally:
        client.close()


def _simulate(args: argparse.Namespace, settings: Settings, config: Any) -> Iterator[str]:
    import polars as pl  # noqa: PLC0415

    from offline.datasets.synthetic import SyntheticConfig  # noqa: PLC0415
    from offline.simulate import simulate  # noqa: PLC0415
    from shared.bundle import Bundle, Files  # noqa: PLC0415
    from shared.config import build  # noqa: PLC0415

    if config.dataset != "synthetic":
        raise ConfigError("simulate needs the synthetic world (--dataset synthetic)")
    options = build(SyntheticConfig, config.dataset_options, "dataset options for synthetic")
    published = Bundle.published(args.artifacts or settings.artifacts_dir)
    seen = (
        pl.read_parquet(published[0].path(Files.INTERACTIONS), columns=["user_id", "item_id"])
        if published
        else None
    )
    gateway = args.gateway or f"http://127.0.0.1:{settings.api_port}"
    keys = sorted(settings.api_key_set)
    report = simulate(
        gateway, options, visits=args.visits, seed=args.seed, seen=seen,
        api_key=keys[0] if keys else None,
    )  # fmt: skip
    yield from report.lines()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # simulate: not a line per request
    try:
        settings = Settings()
        config = load_config(args.config, dataset=args.dataset, data_dir=args.data_dir)
        if args.step == "config":
            print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
            return 0
        if args.step == "ingest":
            for line in _ingest(args, settings):
                print(line, flush=True)
            return 0
        if args.step == "simulate":
            for line in _simulate(args, settings, config):
                print(line, flush=True)
            return 0
        context = pipeline.Context(
            config=config,
            artifacts=args.artifacts or settings.artifacts_dir,
            redis_url=args.redis_url or settings.redis_url,
            redis_cluster=settings.redis_cluster,
            key_prefix=settings.key_prefix,
            version=args.bundle_version,
            resume=args.resume,
        )
        quiet = int(os.environ.get("RANK", "0")) != 0  # under torchrun only rank 0 reports
        if args.quick_first and args.step != "run":
            raise ConfigError("--quick-first goes with the run step only")
        first = settings.ranker if args.quick_first else None  # the one RECSYS_RANKER serves
        for line in pipeline.run_step(args.step, context, first=first):
            if not quiet:
                print(line)
    except RecsysError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CODES.get(type(e), 1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
