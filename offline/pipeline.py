"""The worker's steps, each reading and extending one bundle."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from offline import etl
from offline.config import PipelineConfig
from offline.datasets import load_dataset
from shared.bundle import Bundle

__all__ = ["STEPS", "Context", "run_step"]


@dataclass
class Context:
    config: PipelineConfig
    artifacts: Path
    redis_url: str
    key_prefix: str = "recsys:"
    version: str | None = None
    bundle: Bundle | None = None

    def open_bundle(self) -> Bundle:
        if self.bundle is None:
            self.bundle = Bundle.open(self.artifacts, self.version)
        return self.bundle


def etl_step(ctx: Context) -> Iterator[str]:
    c = ctx.config
    dataset = load_dataset(c.dataset, c.data_dir, c.dataset_options)
    result = etl.run(dataset, c.etl)
    bundle = Bundle.create(ctx.artifacts, c.dataset, c.model_dump(mode="json"))
    try:
        etl.write(result, bundle)
        bundle.finish()
    except BaseException:
        bundle.discard()
        raise
    ctx.bundle = bundle
    s = result.stats
    split = ", ".join(f"{k} {v}" for k, v in sorted(s["split"].items()))
    yield f"etl: {s['users']} users, {s['items']} items, {s['interactions']} interactions ({split})"
    yield f"etl: {s['feature_slots']} feature slots; wrote {bundle.root}"


STEP_FUNCTIONS: dict[str, Callable[[Context], Iterator[str]]] = {
    "etl": etl_step,
}
STEPS = (*STEP_FUNCTIONS, "run")


def run_step(step: str, ctx: Context) -> Iterator[str]:
    names = list(STEP_FUNCTIONS) if step == "run" else [step]
    for name in names:
        yield from STEP_FUNCTIONS[name](ctx)
