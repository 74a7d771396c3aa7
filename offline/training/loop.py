"""The training loop every model shares.

AdamW (or Adam, SGD with momentum), per-group learning rates (embeddings, cross
layers, deep layers, task heads), linear warm-up then cosine decay to ``min_lr`` (or a
plateau schedule on the validation metric, or none), optional gradient centralization,
gradient clipping, early stopping on a validation metric with the best weights kept,
fixed seeds. Batches are index arrays
into tensors the task already holds (no per-sample ``__getitem__``). Under ``torchrun``
the loop wraps the model in DDP (gloo) and each rank takes its share of every epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field, model_validator
from tqdm import tqdm

from shared.config import StrictConfig

__all__ = [
    "History",
    "PlateauConfig",
    "TrainerConfig",
    "distributed",
    "fit",
    "parameter_group",
    "seed_everything",
]

ParameterGroup = Literal["embedding", "cross", "deep", "heads"]

log = logging.getLogger(__name__)


class PlateauConfig(StrictConfig):
    """``scheduler: plateau``: the learning rate times ``factor`` after ``patience`` epochs
    without a validation gain above ``threshold`` (relative), down to ``min_lr``."""

    factor: float = Field(0.5, gt=0, lt=1)
    patience: int = Field(1, ge=0)
    threshold: float = Field(1e-4, ge=0)


class TrainerConfig(StrictConfig):
    epochs: int = Field(10, ge=1)
    max_examples: int | None = Field(
        None,
        ge=1,
        description="at most this many examples an epoch, drawn anew each epoch "
        "(None: all of them)",
    )
    batch_size: int = Field(2048, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    embedding_weight_decay: float = Field(
        0.0, ge=0, description="decoupled decay of embedding tables"
    )
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    warmup_steps: int | None = Field(
        None, ge=0, description="warm-up in optimizer steps (in place of warmup_frac)"
    )
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd
    nesterov: bool = False  # sgd
    lr_scale: dict[ParameterGroup, float] = Field(
        default_factory=dict,
        description="layer-wise learning rates: each group's lr is lr times this "
        "(embedding tables, DCN cross layers, deep layers, task heads; default 1)",
    )
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    min_lr: float = Field(0.0, ge=0, description="the learning rate cosine decays to")
    plateau: PlateauConfig = PlateauConfig()
    grad_centralization: bool = Field(
        False, description="centre each weight matrix's gradient over its input axes"
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: the forward pass and loss under bfloat16 autocast "
        "(weights, gradients and the optimizer stay float32)",
    )  # fmt: skip
    clip_norm: float = Field(5.0, gt=0)
    patience: int = Field(2, ge=1, description="epochs without improvement before stopping")
    seed: int = 0
    threads: int | None = Field(
        None, ge=1, description="torch intra-op threads (default: all cores)"
    )

    @model_validator(mode="after")
    def _check(self) -> TrainerConfig:
        if any(not 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        if any(v <= 0 for v in self.lr_scale.values()):
            raise ValueError("lr_scale values must be positive")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} is above lr {self.lr}")
        return self


def parameter_group(name: str) -> ParameterGroup:
    """The layer-wise group of a parameter, by its module path."""
    if "embedding" in name:
        return "embedding"
    if "cross_arch" in name:
        return "cross"
    if "over_arch" in name or "heads" in name:
        return "heads"
    return "deep"


def _optimizer(model: torch.nn.Module, config: TrainerConfig) -> torch.optim.Optimizer:
    """One parameter group per (layer group, decay): weight matrices decay, embedding
    tables by their own rate, biases and norms not."""
    groups: dict[tuple[str, float], list[torch.nn.Parameter]] = {}
    for n, p in model.named_parameters():
        group = parameter_group(n)
        decay = (
            config.embedding_weight_decay if group == "embedding"
            else config.weight_decay if p.ndim > 1 else 0.0
        )  # fmt: skip
        groups.setdefault((group, decay), []).append(p)
    params = [
        {"params": ps, "weight_decay": decay, "lr": config.lr * config.lr_scale.get(g, 1.0)}
        for (g, decay), ps in groups.items()
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov
        )
    # AdamW decays the weights apart from the gradient; Adam adds the decay to it (L2)
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=config.lr, betas=config.betas)


def _centralize(model: torch.nn.Module) -> None:
    """Gradient centralization: each weight matrix's gradient minus its mean over the
    input axes (Yong et al., 2020); embedding tables are left alone."""
    for n, p in model.named_parameters():
        if p.grad is not None and p.ndim > 1 and "embedding" not in n:
            p.grad -= p.grad.mean(dim=tuple(range(1, p.ndim)), keepdim=True)


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = -math.inf
    samples_per_s: float = 0.0


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def distributed() -> tuple[int, int]:
    """(rank, world size); joins the gloo process group when launched by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _schedule(
    step: int, total: int, warmup: int, kind: str = "cosine", floor: float = 0.0
) -> float:
    """The learning rate's factor at ``step``: a linear warm-up, then cosine decay to
    ``floor`` (``min_lr / lr``), or flat (``none``, ``plateau``: the plateau scales it)."""
    if step < warmup:
        return (step + 1) / warmup
    if kind != "cosine":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def fit(
    model: torch.nn.Module,
    config: TrainerConfig,
    n_examples: int,
    loss_fn: Callable[[torch.nn.Module, np.ndarray], torch.Tensor],
    validate: Callable[[torch.nn.Module], float] | None,
    name: str,
) -> History:
    """Train ``model`` in place and leave it holding its best validated weights.

    Without ``validate`` (a refit on every interaction, nothing held out) it trains all
    ``config.epochs`` and keeps the last weights.

    Args:
        model: the module to train.
        config: loop settings.
        n_examples: size of the training set; batches are index arrays into it.
        loss_fn: ``(model, batch_indices) -> scalar loss`` (the task builds the inputs).
        validate: ``model -> metric`` (higher is better), run after every epoch, or None.
        name: shown in logs and the progress bar.

    Returns:
        The per-epoch history (train loss, validation metric, learning rate, time).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    rank, world = distributed()
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = _optimizer(model, config)
    drawn = min(n_examples, config.max_examples or n_examples)
    per_rank = math.ceil(drawn / world)
    steps_per_epoch = max(1, math.ceil(per_rank / config.batch_size))
    total = steps_per_epoch * config.epochs
    warmup = (
        config.warmup_steps if config.warmup_steps is not None
        else max(1, int(total * config.warmup_frac))
    )  # fmt: skip
    floor = config.min_lr / config.lr
    plateau = {"scale": 1.0, "best": -math.inf, "bad": 0}  # scheduler "plateau"
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: max(
            _schedule(s, total, warmup, config.scheduler, floor) * plateau["scale"],
            floor,
        ),
    )
    generator = np.random.default_rng(config.seed)
    history = History()
    best_state = copy.deepcopy(model.state_dict()) if validate is not None else None
    bad_epochs = 0
    show_bar = sys.stderr.isatty() and rank == 0
    seen, busy = 0, 0.0
    for epoch in range(1, config.epochs + 1):
        net.train()
        # the same permutation on every rank
        order = generator.permutation(n_examples)[:drawn][rank::world]
        started = time.perf_counter()
        losses = []
        bar = tqdm(
            total=len(order),
            desc=f"{name} {epoch}/{config.epochs}",
            unit="ex",
            disable=not show_bar,
            leave=False,
        )
        for lo in range(0, len(order), config.batch_size):
            batch = order[lo : lo + config.batch_size]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                loss = loss_fn(net, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_centralization:
                _centralize(model)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update(len(batch))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.close()
        elapsed = time.perf_counter() - started
        seen += len(order)
        busy += elapsed
        model.eval()
        with torch.no_grad():
            metric = float(validate(model)) if validate is not None else math.nan
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "valid_metric": metric,
            "lr": scheduler.get_last_lr()[0],
            "seconds": elapsed,
            "samples_per_s": len(order) / elapsed if elapsed else 0.0,
        }
        history.epochs.append(row)
        if config.scheduler == "plateau" and validate is not None:
            p = config.plateau
            best = plateau["best"]
            if best == -math.inf or metric > best + p.threshold * abs(best):
                plateau["best"], plateau["bad"] = metric, 0
            else:
                plateau["bad"] += 1
                if plateau["bad"] > p.patience:
                    plateau["scale"] *= p.factor
                    plateau["bad"] = 0
                    log.info("%s: validation stalled, learning rate × %g", name, p.factor)
        if rank == 0:
            log.info(
                "%s epoch %d: loss %.4f, valid %.4f, %.0f samples/s",
                name, epoch, row["train_loss"], metric, row["samples_per_s"] * world,
            )  # fmt: skip
        if validate is None:
            history.best_epoch = epoch
        elif metric > history.best_metric:
            history.best_metric, history.best_epoch = metric, epoch
            best_state = copy.deepcopy(model.state_dict())
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history.samples_per_s = seen * world / busy if busy else 0.0
    return history
