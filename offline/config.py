"""The worker's configuration: one YAML file, one typed section per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from offline.etl import EtlConfig
from offline.evaluate import EvaluateConfig
from offline.index import IndexConfig
from offline.publish import PublishConfig
from offline.training.ranking import RankingConfig
from offline.training.retrieval import RetrievalConfig
from shared.config import StrictConfig, build, load_yaml

__all__ = ["STEP_SECTIONS", "PipelineConfig", "ServingConfig", "load_config", "merge_defaults"]


class ServingConfig(StrictConfig):
    refit: bool = Field(
        True,
        description="after evaluation, retrain every model on all interactions and serve those",
    )


class PipelineConfig(StrictConfig):
    dataset: str = "synthetic"
    data_dir: Path | None = None
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    etl: EtlConfig = EtlConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    ranking: RankingConfig = RankingConfig()
    index: IndexConfig = IndexConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    serving: ServingConfig = ServingConfig()
    publish: PublishConfig = PublishConfig()


# the step each section configures (what the manifest records per step)
STEP_SECTIONS = {
    "etl": ("dataset", "data_dir", "dataset_options", "etl"),
    "train-retrieval": ("retrieval",),
    "train-ranking": ("ranking", "evaluate"),
    "index": ("index",),
    "export": (),
    "evaluate": ("evaluate", "ranking"),
    "refit": ("serving", "retrieval", "ranking", "index"),
    "publish": ("publish",),
}


def load_config(path: str | Path | None, **overrides: Any) -> PipelineConfig:
    """The YAML file (if any) with command-line ``overrides`` (None values ignored) on top.

    A block overrides only the keys it names: ``retrieval: {trainer: {epochs: 5}}`` keeps
    every other default of ``retrieval.trainer`` (each section's own, which may differ
    from the trainer's class defaults). Lists are replaced whole; unknown keys are an error.
    """
    data = load_yaml(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return build(
        PipelineConfig, merge_defaults(PipelineConfig().model_dump(), data), str(path or "config")
    )


def merge_defaults(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` laid over ``defaults``, mapping by mapping (keys ``defaults`` lacks are kept,
    so that validation names them)."""
    out = dict(defaults)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_defaults(out[key], value)
        else:
            out[key] = value
    return out
