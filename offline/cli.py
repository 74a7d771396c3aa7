"""``python -m offline <step>``: the worker's command line.

Steps: etl, train-retrieval, train-ranking, index, export, evaluate, publish, and run
(all of them in order); ``config`` prints the effective config (defaults, the file,
the flags) as YAML. Errors end with one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from offline import pipeline
from offline.config import load_config
from shared.errors import ConfigError, DataError, RecsysError, StoreError
from shared.settings import Settings

__all__ = ["main"]

EXIT_CODES: dict[type[RecsysError], int] = {DataError: 2, ConfigError: 2, StoreError: 3}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m offline", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=[*pipeline.STEPS, "config"], help="what to run")
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
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = Settings()
        config = load_config(args.config, dataset=args.dataset, data_dir=args.data_dir)
        if args.step == "config":
            print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
            return 0
        context = pipeline.Context(
            config=config,
            artifacts=args.artifacts or settings.artifacts_dir,
            redis_url=args.redis_url or settings.redis_url,
            key_prefix=settings.key_prefix,
            version=args.bundle_version,
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
