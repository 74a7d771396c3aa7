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

__all__ = ["PipelineConfig", "load_config"]


class PipelineConfig(StrictConfig):
    dataset: str = "synthetic"
    data_dir: Path | None = None
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    etl: EtlConfig = EtlConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    ranking: RankingConfig = RankingConfig()
    index: IndexConfig = IndexConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    publish: PublishConfig = PublishConfig()


def load_config(path: str | Path | None, **overrides: Any) -> PipelineConfig:
    """The YAML file (if any) with command-line ``overrides`` (None values ignored) on top."""
    data = load_yaml(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return build(PipelineConfig, data, str(path or "config"))
