"""Where a training run leaves its traces: checkpoints to resume from, TensorBoard event
files and, optionally, an MLflow run in a local file store.

Everything lives under one folder per bundle (``<bundle>/runs/``), one name per model
(``two-tower``, ``dcn``, …)::

    runs/<name>.ckpt                  the latest checkpoint (trainer.checkpoint_every)
    runs/tensorboard/<name>/          event files (trainer.tensorboard)
    runs/mlruns/                      MLflow's file store (trainer.mlflow)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.errors import ConfigError

__all__ = ["RunLog", "Tracking", "load_checkpoint", "save_checkpoint"]

log = logging.getLogger(__name__)

# trainer options a resumed run may change: how long it goes on, and where its traces go
RESUMABLE_CHANGES = frozenset({"epochs", "patience", "checkpoint_every", "tensorboard", "mlflow"})


@dataclass(frozen=True)
class Tracking:
    """The run folder, and whether to continue from the checkpoint found there."""

    folder: Path
    resume: bool = False

    def checkpoint(self, name: str) -> Path:
        return self.folder / f"{name}.ckpt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a crash mid-write keeps the previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (None when there is none).

    Raises:
        ConfigError: it was written under other trainer options than ``config`` (past
            those a resumed run may change), or it is not a readable checkpoint.
    """
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=False)
        written = state["config"]
    except (OSError, RuntimeError, KeyError, EOFError) as e:
        raise ConfigError(f"{path}: not a readable checkpoint ({e})") from None
    changed = sorted(k for k in config.keys() | written.keys()
                     if k not in RESUMABLE_CHANGES and config.get(k) != written.get(k))  # fmt: skip
    if changed:
        raise ConfigError(
            f"{path} was written with other trainer options ({', '.join(changed)}); "
            "resume with the same options, or delete the checkpoint to start afresh"
        )
    return state


class RunLog:
    """Per-step and per-epoch scalars to TensorBoard and MLflow (each when asked for).

    Args:
        tracking (Tracking | None): the run folder; None writes nothing.
        name (str): the model's name (a TensorBoard subfolder, the MLflow run's name).
        config (dict): the trainer options, recorded with the run.
        tensorboard (bool), mlflow (bool): which sinks to write.

    Raises:
        ConfigError: a sink is asked for and its package is not installed.
    """

    def __init__(
        self, tracking: Tracking | None, name: str, config: dict[str, Any],
        tensorboard: bool, mlflow: bool,
    ) -> None:  # fmt: skip
        self.writer = self.client = self.run_id = None
        if tracking is None:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
            except ImportError:
                raise ConfigError(
                    "trainer.tensorboard needs the tensorboard package: "
                    "pip install 'recsys-stack[tracking]'"
                ) from None
            self.writer = SummaryWriter(str(tracking.folder / "tensorboard" / name))
            self.writer.add_text("config", f"```\n{json.dumps(config, indent=2)}\n```")
        if mlflow:
            try:
                from mlflow import MlflowClient  # noqa: PLC0415
            except ImportError:
                raise ConfigError(
                    "trainer.mlflow needs the mlflow package: pip install 'recsys-stack[tracking]'"
                ) from None
            # the local file store the run folder keeps (MLflow 3 asks for this opt-in)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            store = tracking.folder / "mlruns"
            store.mkdir(parents=True, exist_ok=True)
            self.client = MlflowClient(tracking_uri=store.resolve().as_uri())
            found = self.client.get_experiment_by_name("recsys")
            experiment = found.experiment_id if found else self.client.create_experiment("recsys")
            self.run_id = self.client.create_run(experiment, run_name=name).info.run_id
            for key, value in config.items():
                self.client.log_param(self.run_id, key, json.dumps(value))

    def step(self, step: int, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/batch_loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, row: dict[str, float], step: int) -> None:
        for key in ("train_loss", "valid_metric", "lr", "samples_per_s"):
            value = float(row[key])
            if value != value:  # NaN: no validation (a refit)
                continue
            if self.writer is not None:
                self.writer.add_scalar(f"epoch/{key}", value, int(row["epoch"]))
            if self.client is not None:
                self.client.log_metric(self.run_id, key, value, step=int(row["epoch"]))
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.client is not None:
            self.client.set_terminated(self.run_id)
