"""Training task of the multi-task rankers (DeepFM, DCN-v2).

The task owns the loss (weighted per-task BCE, MSE for regression, children trained
on rows where their parent is 1). Validation is the AUC of the first task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
import torch
from pydantic import Field

from offline.metrics import auc
from offline.training.history import CausalHistory, HistoryConfig
from offline.training.impressions import (
    ChosenBy,
    Sampling,
    effective_tasks,
    ranking_impressions,
)
from offline.training.loop import History, TrainerConfig, fit
from offline.training.losses import multitask_loss
from offline.training.tracking import Tracking
from shared.errors import ConfigError
from shared.features import ContextBatch, FeatureTables
from shared.models.rankers import DCNConfig, Ranker, RankerConfig, TaskHead, build_ranker
from shared.schema import DatasetSpec

__all__ = [
    "RankerTrainTask",
    "RankingConfig",
    "RankingData",
    "predict",
    "ranking_data",
    "train_ranker",
]

RankerKind = Literal["dcn", "deepfm"]


class RankingConfig(HistoryConfig):
    # the rankers to train (each is trained, tuned, exported and refit); by default only
    # DCN-v2, which the gateway serves unless told otherwise (RECSYS_RANKER): a second
    # ranker doubled the training and the refit for a comparison (on validation, DCN-v2's
    # AUC was DeepFM's or better on both MovieLens sets, its blended NDCG@10 within 0.005)
    models: tuple[RankerKind, ...] = ("dcn",)
    embed_dim: int = Field(16, ge=1)
    hidden: tuple[int, ...] = (256, 128)
    dropout: float | tuple[float, ...] = Field(
        0.0, description="after each deep layer: one probability, or one per layer"
    )
    batch_norm: bool = False  # BatchNorm1d in the deep layers (deep_block mlp)
    deep_block: Literal["mlp", "residual"] = Field(
        "mlp", description="deep layers Linear → ReLU → Dropout, or residual blocks "
        "Linear → LayerNorm → GELU → Dropout with identity or projected skips",
    )  # fmt: skip
    head_hidden: tuple[int, ...] = Field(
        (), description="each task head's own MLP before its Linear"
    )
    head_dropout: float = Field(0.0, ge=0, lt=1)
    head_batch_norm: bool = False
    mixup_alpha: float = Field(
        0.0, ge=0, description="manifold mixup of the field embeddings: rows mixed with "
        "λ ~ Beta(α, α) and their losses weighed λ, 1 − λ (0: off)",
    )  # fmt: skip
    dcn: DCNConfig = DCNConfig(low_rank=32)  # low rank: ~1.5x the samples/s of full rank
    neg_ratio: int = Field(4, ge=1, description="sampled negatives per interaction (implicit data)")
    negative_sampling: Sampling = "mixed"
    task_weights: dict[str, float] = Field(default_factory=dict, description="loss weight per task")
    pos_weight: dict[str, float] = Field(
        default_factory=dict, description="weight of a binary task's positive rows in its BCE"
    )
    score_weights: dict[str, float] = Field(
        default_factory=dict, description="final score weight per task"
    )
    retrieval_weight: float | None = Field(
        None,
        ge=0,
        description="weight of the two-tower logit in the final score (0: the ranker alone); "
        "None: the value of retrieval_weight_grid with the best validation NDCG@10",
    )
    retrieval_weight_grid: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
    trainer: TrainerConfig = TrainerConfig(epochs=20, batch_size=4096, lr=2e-3, patience=2)


@dataclass
class RankingData:
    """One split's impressions as arrays."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    context: ContextBatch
    labels: dict[str, np.ndarray]
    oracle: np.ndarray | None = None
    frame: pl.DataFrame = field(default_factory=pl.DataFrame, repr=False)

    def __len__(self) -> int:
        return len(self.user)


def ranking_data(
    tables: FeatureTables, interactions: pl.DataFrame, spec: DatasetSpec, config: RankingConfig
) -> dict[str, RankingData]:
    """Train / valid / test impressions (with sampled negatives for implicit data)."""
    n_items = len(tables.items) - 1
    chosen = ChosenBy.of(interactions, n_items)
    popularity = np.bincount(
        interactions.filter(pl.col("split") == "train")["item_idx"].to_numpy(),
        minlength=n_items + 1,
    )
    tasks = effective_tasks(spec)
    out = {}
    for i, split in enumerate(("train", "valid", "test")):
        frame = ranking_impressions(
            interactions.filter(pl.col("split") == split),
            spec,
            n_items,
            config.neg_ratio,
            config.negative_sampling,
            config.trainer.seed + i,
            chosen,
            popularity,
        )
        out[split] = RankingData(
            user=frame["user_idx"].to_numpy(),
            item=frame["item_idx"].to_numpy(),
            ts=frame["ts"].to_numpy(),
            context=tables.context_batch(frame),
            labels={t.name: frame[t.name].cast(pl.Float32).to_numpy() for t in tasks},
            oracle=frame[spec.oracle_column].to_numpy() if spec.oracle_column else None,
            frame=frame,
        )
    return out


class RankerTrainTask(torch.nn.Module):
    """Wraps a :class:`Ranker` with its multi-task loss so DDP sees one ``forward``.

    ``mixup_alpha > 0``: manifold mixup (Verma et al., 2019) at the field embeddings,
    ``f = λ·f + (1 − λ)·f[π]`` with ``λ ~ Beta(α, α)`` and ``π`` a shuffle of the batch,
    and the loss ``λ·L(y) + (1 − λ)·L(y[π])`` (each task's own masks kept), while training.
    """

    def __init__(
        self, model: Ranker, weights: dict[str, float], pos_weight: dict[str, float] | None = None,
        mixup_alpha: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        self.weights = weights
        self.pos_weight = pos_weight or {}
        self.mixup = torch.distributions.Beta(mixup_alpha, mixup_alpha) if mixup_alpha else None

    def _loss(
        self, outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        tasks = self.model.config.tasks
        return multitask_loss(outputs, labels, tasks, self.weights, self.pos_weight)[0]

    def forward(self, inputs, labels: dict[str, torch.Tensor]) -> torch.Tensor:  # noqa: ANN001
        if self.mixup is None or not self.training:
            return self._loss(self.model(inputs), labels)
        fields = self.model.sparse_arch(inputs.cat, inputs.multi, inputs.dense)  # (B, F, ·)
        lam = float(self.mixup.sample())
        shuffle = torch.randperm(len(fields), device=fields.device)
        outputs = self.model.head(lam * fields + (1 - lam) * fields[shuffle])
        mixed = {name: y[shuffle] for name, y in labels.items()}
        return lam * self._loss(outputs, labels) + (1 - lam) * self._loss(outputs, mixed)


def predict(
    model: Ranker,
    tables: FeatureTables,
    data: RankingData,
    history: np.ndarray | None = None,
    batch: int = 65_536,
) -> dict[str, np.ndarray]:
    """Chained probabilities of every task for every impression of ``data``.

    ``history`` (len(data), H) replaces the users' stored latest items.
    """
    parts: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for lo in range(0, len(data), batch):
            s = slice(lo, lo + batch)
            hist = None if history is None else history[s]
            probs = model.probabilities(
                tables.ranker_inputs(data.user[s], data.item[s], data.context.take(s), hist)
            )
            for name, p in probs.items():
                parts.setdefault(name, []).append(p.numpy())
    return {name: np.concatenate(p) for name, p in parts.items()}


def ranker_config(
    kind: RankerKind, tables: FeatureTables, spec: DatasetSpec, config: RankingConfig
) -> RankerConfig:
    return RankerConfig(
        vocab_size=tables.feature_map.size,
        **tables.ranker_widths,
        embed_dim=config.embed_dim,
        hidden=config.hidden,
        dropout=config.dropout,
        batch_norm=config.batch_norm,
        deep_block=config.deep_block,
        head_hidden=config.head_hidden,
        head_dropout=config.head_dropout,
        head_batch_norm=config.head_batch_norm,
        tasks=tuple(
            TaskHead(name=t.name, kind=t.kind.value, parent=t.parent) for t in effective_tasks(spec)
        ),
        dcn=config.dcn,
        history_decay=config.history_decay,
    )


@dataclass
class RankerResult:
    kind: RankerKind
    model: Ranker
    config: RankerConfig
    history: History


def train_ranker(
    kind: RankerKind,
    tables: FeatureTables,
    data: dict[str, RankingData],
    spec: DatasetSpec,
    config: RankingConfig,
    tracking: Tracking | None = None,
) -> RankerResult:
    """Train one ranker; keep the weights with the best validation AUC of the first task."""
    model_config = ranker_config(kind, tables, spec, config)
    torch.manual_seed(config.trainer.seed)
    model = build_ranker(kind, model_config)
    tasks = effective_tasks(spec)
    weights = {t.name: t.weight for t in tasks} | config.task_weights
    unknown = set(config.pos_weight) - {t.name for t in tasks if t.kind == "binary"}
    if unknown:
        raise ConfigError(f"ranking.pos_weight: {sorted(unknown)} are not binary tasks")
    task = RankerTrainTask(model, weights, config.pos_weight, config.mixup_alpha)
    train, valid = data["train"], data["valid"]
    labels = {name: torch.from_numpy(v) for name, v in train.labels.items()}
    first = tasks[0].name

    positive = train.labels[first] == 1
    causal = CausalHistory(
        train.user[positive],
        train.ts[positive],
        tables.items.id_slot[train.item[positive]],
        tables.history.shape[1],
    )

    rng = np.random.default_rng(config.trainer.seed)

    def loss_fn(net: torch.nn.Module, batch: np.ndarray) -> torch.Tensor:
        users, ts = train.user[batch], train.ts[batch]
        if config.history == "causal":
            history = causal.sample(users, ts, config.two_sided, rng)
        else:
            history = causal.latest(users)
        inputs = tables.ranker_inputs(users, train.item[batch], train.context.take(batch), history)
        idx = torch.from_numpy(batch)
        return net(inputs, {name: v[idx] for name, v in labels.items()})

    valid_history = causal(valid.user, valid.ts)

    def validate(_: torch.nn.Module) -> float:
        if len(valid) == 0:
            return 0.0
        probs = predict(model, tables, valid, valid_history)
        return auc(np.nan_to_num(valid.labels[first]), probs[first])

    history = fit(
        task, config.trainer, len(train), loss_fn, validate if len(valid) else None, kind, tracking
    )
    return RankerResult(kind, model, model_config, history)


def score_weights(spec: DatasetSpec, config: RankingConfig) -> dict[str, float]:
    """Weights of the final ranking score: the spec's, overridden by the config."""
    return {t.name: t.score_weight for t in effective_tasks(spec)} | config.score_weights
