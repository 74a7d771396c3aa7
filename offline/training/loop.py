"""The training loop every model shares.

AdamW (or Adam, SGD with momentum), per-group learning rates (embeddings, cross
layers, deep layers, task heads), linear warm-up then cosine decay to ``min_lr`` (or a
plateau schedule on the validation metric, or none), optional gradient centralization,
gradient clipping, early stopping on a validation metric with the best weights kept,
fixed seeds. Batches are index arrays
into tensors the task already holds (no per-sample ``__getitem__``).

Device and precision: ``device: auto`` trains on CUDA when torch sees it (batches
built on the CPU, pinned, copied without blocking), on the CPU otherwise; validation
runs on the CPU. ``precision: bf16`` autocasts the forward pass to bfloat16 (the CPU's
mixed precision), ``fp16`` to float16 with a gradient scaler (CUDA's). Under
``torchrun`` the loop wraps the model in DDP (NCCL on CUDA, gloo on the CPU) and each
rank takes its share of every epoch. ``sparse_embeddings`` ("hybrid"): embedding tables
get sparse gradients and SparseAdam, every other parameter the dense optimizer.

Traces (:mod:`offline.training.tracking`): a checkpoint every ``checkpoint_every``
epochs that ``--resume`` continues from, TensorBoard event files, an MLflow run.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field, model_validator
from tqdm import tqdm

from offline.training.tracking import RunLog, Tracking, load_checkpoint, save_checkpoint
from shared.config import StrictConfig
from shared.errors import ConfigError

__all__ = [
    "History",
    "PlateauConfig",
    "TrainerConfig",
    "distributed",
    "fit",
    "parameter_group",
    "resolve_device",
    "seed_everything",
    "to_device",
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
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="bf16: the forward pass and loss under bfloat16 autocast "
        "(weights, gradients and the optimizer stay float32; the CPU's mixed precision); "
        "fp16: float16 autocast with a gradient scaler (CUDA's)",
    )  # fmt: skip
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when torch sees a GPU, else the CPU"
    )
    sparse_embeddings: bool = Field(
        False, description="hybrid: sparse gradients and SparseAdam for the embedding "
        "tables (only the looked-up rows move), the dense optimizer for the rest",
    )  # fmt: skip
    checkpoint_every: int = Field(
        0, ge=0, description="write a checkpoint every this many epochs (0: none); "
        "--resume continues from it",
    )  # fmt: skip
    tensorboard: bool = Field(False, description="TensorBoard event files per run")
    mlflow: bool = Field(False, description="an MLflow run in the bundle's local file store")
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
        if self.sparse_embeddings and self.embedding_weight_decay:
            raise ValueError("sparse_embeddings: SparseAdam has no weight decay "
                             "(set embedding_weight_decay to 0)")  # fmt: skip
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


def _embedding_tables(model: torch.nn.Module) -> list[torch.nn.Embedding]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]


def _optimizers(model: torch.nn.Module, config: TrainerConfig) -> list[torch.optim.Optimizer]:
    """One parameter group per (layer group, decay): weight matrices decay, embedding
    tables by their own rate, biases and norms not. With ``sparse_embeddings`` the
    tables go to a second optimizer, SparseAdam."""
    groups: dict[tuple[str, float], list[torch.nn.Parameter]] = {}
    sparse = {id(m.weight): m.weight for m in _embedding_tables(model)}
    if not config.sparse_embeddings:
        sparse = {}
    for n, p in model.named_parameters():
        if id(p) in sparse:
            continue
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
        dense = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov
        )
    else:  # AdamW decays the weights apart from the gradient; Adam adds the decay to it (L2)
        kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        dense = kind(params, lr=config.lr, betas=config.betas)
    if not sparse:
        return [dense]
    lr = config.lr * config.lr_scale.get("embedding", 1.0)
    return [dense, torch.optim.SparseAdam(list(sparse.values()), lr=lr, betas=config.betas)]


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


def distributed(device: torch.device | None = None) -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun (NCCL
    when training on CUDA, gloo otherwise)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device is not None and device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(kind: str) -> torch.device:
    """The device ``trainer.device`` names (under torchrun, CUDA device ``LOCAL_RANK``).

    Raises:
        ConfigError: ``cuda`` where torch sees no CUDA device.
    """
    cuda = torch.cuda.is_available()
    if kind == "cuda" and not cuda:
        raise ConfigError(
            "trainer.device is cuda, but torch sees no CUDA device (a CPU build of torch, "
            "or no GPU); use auto or cpu"
        )
    if kind == "cuda" or (kind == "auto" and cuda):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def to_device(x: Any, device: torch.device) -> Any:
    """Tensors inside ``x`` (named tuples, tuples, lists, dicts) on ``device``; CPU
    tensors bound for CUDA are pinned and copied without blocking."""
    if isinstance(x, torch.Tensor):
        if x.device == device:
            return x
        if device.type == "cuda" and x.device.type == "cpu":
            return x.pin_memory().to(device, non_blocking=True)
        return x.to(device)
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(to_device(v, device) for v in x))
    if isinstance(x, list | tuple):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


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
    tracking: Tracking | None = None,
) -> History:
    """Train ``model`` in place and leave it holding its best validated weights, on the CPU.

    Without ``validate`` (a refit on every interaction, nothing held out) it trains all
    ``config.epochs`` and keeps the last weights.

    Args:
        model: the module to train.
        config: loop settings.
        n_examples: size of the training set; batches are index arrays into it.
        loss_fn: ``(model, batch_indices) -> scalar loss`` (the task builds the inputs,
            on the CPU; the loop moves them to the model's device).
        validate: ``model -> metric`` (higher is better), run after every epoch on the
            CPU, or None.
        name: shown in logs and the progress bar; names the run's traces.
        tracking: where checkpoints and logs go, and whether to resume (None: nowhere).

    Returns:
        The per-epoch history (train loss, validation metric, learning rate, time).

    Raises:
        ConfigError: ``--resume`` with a checkpoint of other trainer options; a device
            or tracking package that is not there.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    rank, world = distributed(device)
    tables = _embedding_tables(model) if config.sparse_embeddings else []
    for table in tables:
        table.sparse = True
    model.to(device)
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if device.type != "cpu":  # the task builds batches on the CPU
        net.register_forward_pre_hook(
            lambda _, args, kwargs: (to_device(args, device), to_device(kwargs, device)),
            with_kwargs=True,
        )
    optimizers = _optimizers(model, config)
    dense_params = [p for p in model.parameters() if all(p is not t.weight for t in tables)]
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    autocast_dtype = torch.float16 if config.precision == "fp16" else torch.bfloat16
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

    def factor(s: int) -> float:
        return max(_schedule(s, total, warmup, config.scheduler, floor) * plateau["scale"], floor)

    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimizers]
    generator = np.random.default_rng(config.seed)
    history = History()
    best_state = copy.deepcopy(model.state_dict()) if validate is not None else None
    bad_epochs, first_epoch, stopped = 0, 1, False
    options = config.model_dump(mode="json")
    checkpoint = tracking.checkpoint(name) if tracking is not None else None
    if checkpoint is not None and tracking.resume:
        state = load_checkpoint(checkpoint, options)
        if state is not None:
            model.load_state_dict(state["model"])
            for o, saved in zip(optimizers, state["optimizers"], strict=True):
                o.load_state_dict(saved)
            for sch, saved in zip(schedulers, state["schedulers"], strict=True):
                sch.load_state_dict(saved)
            scaler.load_state_dict(state["scaler"])
            history = History(**state["history"])
            best_state, bad_epochs, stopped = (
                state["best_state"],
                state["bad_epochs"],
                state["stopped"],
            )
            plateau.update(state["plateau"])
            generator.bit_generator.state = state["generator"]
            torch.set_rng_state(state["torch_rng"])
            first_epoch = state["epoch"] + 1
            log.info("%s: resumed from %s after epoch %d", name, checkpoint, state["epoch"])
    run_log = RunLog(
        tracking if rank == 0 else None, name, options, config.tensorboard, config.mlflow
    )
    show_bar = sys.stderr.isatty() and rank == 0
    seen, busy = 0, 0.0
    step = (first_epoch - 1) * steps_per_epoch
    for epoch in range(first_epoch, config.epochs + 1):
        if stopped:
            break
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
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=config.precision != "fp32"
            ):
                loss = loss_fn(net, batch)
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            for o in optimizers:
                scaler.unscale_(o)
            if config.grad_centralization:
                _centralize(model)
            # sparse rows are not clipped (a norm over sparse gradients is not defined)
            torch.nn.utils.clip_grad_norm_(dense_params, config.clip_norm)
            for o in optimizers:
                scaler.step(o)
            scale = scaler.get_scale() if scaler.is_enabled() else 1.0
            scaler.update()
            if not scaler.is_enabled() or scaler.get_scale() >= scale:
                for sch in schedulers:  # fp16: not after a step skipped for inf gradients
                    sch.step()
            losses.append(loss.item())
            run_log.step(step, losses[-1], schedulers[0].get_last_lr()[0])
            step += 1
            bar.update(len(batch))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.close()
        elapsed = time.perf_counter() - started
        seen += len(order)
        busy += elapsed
        model.eval()
        model.to("cpu")  # validation reads CPU tensors
        with torch.no_grad():
            metric = float(validate(model)) if validate is not None else math.nan
        model.to(device)
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "valid_metric": metric,
            "lr": schedulers[0].get_last_lr()[0],
            "seconds": elapsed,
            "samples_per_s": len(order) / elapsed if elapsed else 0.0,
        }
        history.epochs.append(row)
        run_log.epoch(row, step)
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
            stopped = bad_epochs >= config.patience
        last = stopped or epoch == config.epochs
        every = config.checkpoint_every
        if checkpoint is not None and rank == 0 and every and (epoch % every == 0 or last):
            save_checkpoint(checkpoint, {
                "config": options, "epoch": epoch, "model": model.state_dict(),
                "optimizers": [o.state_dict() for o in optimizers],
                "schedulers": [sch.state_dict() for sch in schedulers],
                "scaler": scaler.state_dict(), "history": dataclasses.asdict(history),
                "best_state": best_state, "bad_epochs": bad_epochs, "stopped": stopped,
                "plateau": dict(plateau), "generator": generator.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
            })  # fmt: skip
    run_log.close()
    for table in tables:
        table.sparse = False
    model.to("cpu")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if busy:
        history.samples_per_s = seen * world / busy
    return history
