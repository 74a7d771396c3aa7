"""The ``events`` source: what the gateway logged (``offline ingest``), as impressions.

``--dataset events --data-dir events/`` reads the event log and the served bundle (the
latest published under ``artifacts``, or ``version``): its spec, and its user and item
tables with their raw features. Events of one user on one item in one answer
(``request_id``; events without one group by user and item) make one impression row:
its time is the first event's, each task's label is 1 when an event of that task or of
a task below it in the funnel was logged (a purchase is also a click), so impressions
without an outcome are the negatives. The events' context (``page``, ``position``,
``device``, ``anchor``) fills the spec's context features of the same names (null where
an event has none).
With ``with_bundle_interactions`` (the default) the bundle's own interactions come
first, so a retrain learns from what was logged on top of what the version knew (rows
of a bundle trained on the log before count once). Events of one display should all
carry its ``request_id`` (or none of them): a click without it is a row of its own.
Users and items only the events name get null features.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import polars as pl

from offline.datasets.tables import with_all_ids
from offline.ingest import read_events
from shared.bundle import Bundle, Files
from shared.config import StrictConfig
from shared.errors import DataError
from shared.schema import FEATURE_DTYPES, Dataset, DatasetSpec
from shared.settings import Settings

__all__ = ["EventsConfig", "load"]


class EventsConfig(StrictConfig):
    artifacts: Path | None = None  # the bundles folder (default: $RECSYS_ARTIFACTS_DIR)
    version: str | None = None  # the bundle whose tables to join (default: latest published)
    with_bundle_interactions: bool = True


def _bundle(config: EventsConfig) -> Bundle:
    artifacts = config.artifacts or Settings().artifacts_dir
    if config.version is not None:
        return Bundle.open(artifacts, config.version)
    published = Bundle.published(artifacts)
    if not published:
        raise DataError(artifacts, "no published bundle to take the user and item tables from")
    return published[0]


def impressions(events: pl.DataFrame, spec: DatasetSpec) -> pl.DataFrame:
    """One row per (user, item, answer) with a 0/1 label per task (see the module doc)."""
    below: dict[str, set[str]] = {t.name: {t.name} for t in spec.tasks}
    for task in reversed(spec.tasks):  # children come after their parents
        if task.parent in below:
            below[task.parent] |= below[task.name]
    logged = {f.name for f in events.schema["context"].fields}
    context = {
        f.name: (
            pl.col("context").struct.field(f.name).cast(FEATURE_DTYPES[f.kind])
            if f.name in logged
            else pl.lit(None, dtype=FEATURE_DTYPES[f.kind])
        )
        for f in spec.features_of("context")
    }
    rows = events.with_columns(**context, answer=pl.col("request_id").fill_null(""))
    return (
        rows.group_by("uid", "item_id", "answer", maintain_order=True)
        .agg(
            ts=pl.col("ts").min().floor().cast(pl.Int64),
            **{name: pl.col(name).drop_nulls().first() for name in context},
            **{
                name: pl.col("type").is_in(sorted(types)).any().cast(pl.Float64)
                for name, types in below.items()
            },
        )
        .rename({"uid": "user_id"})
        .drop("answer")
        .sort("ts", maintain_order=True)
    )


def load(data_dir: Path | None, config: EventsConfig) -> Dataset:
    """The logged impressions joined with the served bundle's tables."""
    assert data_dir is not None  # needs_dir
    events = read_events(data_dir)
    if not events.height:
        raise DataError(data_dir, "no events (run `python -m offline ingest` first)")
    bundle = _bundle(config)
    spec = DatasetSpec.from_dict(json.loads(bundle.path(Files.SPEC).read_text()))
    spec = replace(spec, name="events", implicit=False, oracle_column=None)
    logged = impressions(events, spec)
    tasks = spec.label_columns
    interactions = logged
    if config.with_bundle_interactions:
        known = pl.read_parquet(bundle.path(Files.INTERACTIONS))
        context = [f.name for f in spec.features_of("context")]
        known = known.select(
            "user_id", "item_id", "ts", *context, *(pl.col(t).cast(pl.Float64) for t in tasks)
        )
        # a bundle trained on the log holds its rows already: the log's version counts once
        known = known.join(logged, on=["user_id", "item_id", "ts"], how="anti")
        interactions = pl.concat([known, logged], how="diagonal_relaxed")
    tables = {}
    for owner, name in (("user", Files.USERS), ("item", Files.ITEMS)):
        columns = [f"{owner}_id", *(f.name for f in spec.features_of(owner))]
        table = pl.read_parquet(bundle.path(name), columns=columns)
        tables[owner] = with_all_ids(table, interactions[f"{owner}_id"], f"{owner}_id")
    return Dataset(
        interactions=interactions,
        users=tables["user"],
        items=tables["item"],
        spec=spec,
        source=str(data_dir),
        origin=bundle.manifest().get("etl", {}).get("origin"),  # the served bundle's world
    )
