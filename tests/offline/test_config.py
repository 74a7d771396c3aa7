"""``offline.config``: partial blocks keep their siblings' defaults; ``offline config`` prints it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from offline.config import PipelineConfig, load_config
from shared.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_a_partial_block_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = _config(
        tmp_path, "retrieval: {trainer: {epochs: 5}}\nranking: {dcn: {cross_layers: 3}}\n"
    )
    config, default = load_config(path), PipelineConfig()
    assert config.retrieval.trainer.epochs == 5
    # the section's own trainer defaults, not the trainer class's
    assert (
        config.retrieval.trainer.model_copy(update={"epochs": default.retrieval.trainer.epochs})
        == default.retrieval.trainer
    )
    assert config.ranking.dcn.cross_layers == 3
    assert config.ranking.dcn.low_rank == default.ranking.dcn.low_rank
    assert config.ranking.trainer == default.ranking.trainer


def test_lists_are_replaced_whole(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, "ranking: {models: [deepfm]}\n"))
    assert list(config.ranking.models) == ["deepfm"]


def test_unknown_keys_still_fail_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"retrieval\.trainer\.epoch"):
        load_config(_config(tmp_path, "retrieval: {trainer: {epoch: 5}}\n"))


def test_offline_config_prints_the_effective_config(tmp_path: Path) -> None:
    path = _config(tmp_path, "retrieval: {trainer: {epochs: 5}}\n")
    out = subprocess.run(
        [sys.executable, "-m", "offline", "config", "--config", str(path), "--dataset", "movielens-100k"],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout  # fmt: skip
    printed = yaml.safe_load(out)
    assert printed["dataset"] == "movielens-100k"
    assert printed["retrieval"]["trainer"]["epochs"] == 5
    assert PipelineConfig.model_validate(printed) == load_config(path, dataset="movielens-100k")
