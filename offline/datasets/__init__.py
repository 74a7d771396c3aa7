"""Dataset sources: one adapter per format, each returning the canonical tables.

``load_dataset(name, data_dir, options)`` is the only entry point the rest of the
worker uses; ``SOURCES`` lists what ``--dataset`` accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline.datasets import events, homepage, movielens, synthetic, tabular
from shared.config import StrictConfig, build
from shared.errors import ConfigError, DataError
from shared.schema import Dataset

__all__ = ["SOURCES", "Source", "load_dataset"]


@dataclass(frozen=True)
class Source:
    load: Callable[[Any, Any], Dataset]
    config: type[StrictConfig]
    needs_dir: bool = True


SOURCES: dict[str, Source] = {
    "synthetic": Source(synthetic.load, synthetic.SyntheticConfig, needs_dir=False),
    "movielens-100k": Source(movielens.load_100k, movielens.MovieLensConfig),
    "movielens-1m": Source(movielens.load_1m, movielens.MovieLensConfig),
    "movielens-latest": Source(movielens.load_latest, movielens.MovieLensLatestConfig),
    "homepage": Source(homepage.load, homepage.HomepageConfig),
    "tabular": Source(tabular.load, tabular.TabularConfig),
    "events": Source(events.load, events.EventsConfig),
}


def load_dataset(
    name: str, data_dir: str | Path | None = None, options: dict[str, Any] | None = None
) -> Dataset:
    """Read (or generate) a source and check it against its spec.

    Raises:
        ConfigError: unknown source, bad options, or no ``data_dir`` where one is needed.
        DataError: a missing or malformed file, naming the file and line.
    """
    if name not in SOURCES:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(SOURCES)}")
    source = SOURCES[name]
    config = build(source.config, options, f"dataset options for {name}")
    path = Path(data_dir) if data_dir is not None else None
    if source.needs_dir:
        if path is None:
            raise ConfigError(f"dataset {name!r} needs --data-dir")
        if not path.is_dir():
            raise DataError(path, "data directory not found")
    return source.load(path, config).validate()
