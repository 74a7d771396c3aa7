"""Multi-task rankers: DeepFM and DCN-v2, assembled from named parts.

Every ranker is ``sparse_arch -> (model-specific interaction) -> over_arch``:

- ``sparse_arch``: :class:`FeatureEmbedding`, all fields of a row as ``(B, F, D)``.
- the interaction, which a variant swaps: DeepFM's first-order sum + ``fm_arch`` +
  ``deep_arch``; DCN-v2's ``cross_arch`` + ``deep_arch``.
- ``over_arch``: :class:`TaskHeads`, one ``Linear`` head per task on the shared bottom.

``forward`` returns raw logits (binary tasks) or values (regression tasks);
:meth:`Ranker.probabilities` chains funnel tasks, ``p(task) = p(parent) · σ(logit)``,
since a child task is trained on the rows where its parent happened (see
``offline.training.losses.multitask_loss``). Losses live in the training task.

Legend: B batch, F embedded fields (``n_cat + n_multi + n_dense``), D embedding
dimension, K = F·D, H last hidden width, T tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator
from torch import nn

from shared.config import StrictConfig
from shared.errors import ConfigError
from shared.models.inputs import RankerInputs
from shared.models.layers import (
    MLP,
    CrossNet,
    FactorizationMachine,
    FeatureEmbedding,
    LowRankCrossNet,
)

__all__ = [
    "RANKERS",
    "DCNConfig",
    "DCNv2",
    "DeepFM",
    "Ranker",
    "RankerConfig",
    "TaskHead",
    "TaskHeads",
    "build_ranker",
    "chain_probabilities",
    "final_score",
]


class TaskHead(StrictConfig):
    """One output of a ranker. ``parent`` names an earlier binary task of a funnel."""

    name: str = Field(min_length=1)
    kind: Literal["binary", "regression"] = "binary"
    parent: str | None = None


class DCNConfig(StrictConfig):
    """The cross part of DCN-v2 (ignored by DeepFM).

    ``structure="stacked"`` feeds the cross output to the deep MLP; ``"parallel"`` runs
    both on the embeddings and concatenates their outputs.
    """

    cross_layers: NonNegativeInt = 2
    low_rank: PositiveInt | None = None  # None: full-rank K×K kernels
    structure: Literal["stacked", "parallel"] = "parallel"


class RankerConfig(StrictConfig):
    """Everything a ranker needs to be rebuilt, and nothing else."""

    vocab_size: int = Field(ge=2)
    n_cat: NonNegativeInt
    n_multi: NonNegativeInt
    n_dense: NonNegativeInt
    embed_dim: PositiveInt = 16
    hidden: tuple[PositiveInt, ...] = (256, 128)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False
    tasks: tuple[TaskHead, ...] = Field(min_length=1)
    dcn: DCNConfig = DCNConfig()
    # pooling decay of the last multi-hot field: the user's recent items, most recent first
    history_decay: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> RankerConfig:
        if self.n_fields == 0:
            raise ValueError("a ranker needs at least one feature field")
        seen: dict[str, TaskHead] = {}
        for task in self.tasks:
            if task.name in seen:
                raise ValueError(f"task {task.name!r} appears twice")
            if task.parent is not None:
                parent = seen.get(task.parent)
                if parent is None:
                    raise ValueError(
                        f"task {task.name!r}: parent {task.parent!r} is not an earlier task"
                    )
                if parent.kind != "binary":
                    raise ValueError(f"task {task.name!r}: parent {task.parent!r} is not binary")
            seen[task.name] = task
        return self

    @property
    def n_fields(self) -> int:
        return self.n_cat + self.n_multi + self.n_dense


def chain_probabilities(
    outputs: Mapping[str, torch.Tensor], tasks: Sequence[TaskHead]
) -> dict[str, torch.Tensor]:
    """Turn raw outputs into served values, parents first.

    Binary: ``p(t) = p(parent(t)) · σ(logit_t)`` (``σ(logit_t)`` for a root task);
    regression: the raw value.

    Args:
        outputs (Mapping[str, Tensor]): task name -> ``(B,)`` logit or value.
        tasks (Sequence[TaskHead]): parents before children.

    Returns:
        dict[str, Tensor]: task name -> ``(B,)``.
    """
    probs: dict[str, torch.Tensor] = {}
    for task in tasks:
        y = outputs[task.name]  # (B,)
        if task.kind == "binary":
            y = torch.sigmoid(y)
            if task.parent is not None:
                y = probs[task.parent] * y
        probs[task.name] = y
    return probs


class TaskHeads(nn.Module):
    """Over arch: one ``Linear(in_dim, 1)`` per task on a shared representation.

    Heads are kept in task order (a ``ModuleList``, so any task name is allowed).

    Call:
        z (Tensor): ``(B, in_dim)``.

    Returns:
        dict[str, Tensor]: task name -> ``(B,)``.
    """

    def __init__(self, in_dim: int, names: Sequence[str]) -> None:
        super().__init__()
        self.names = tuple(names)
        self.heads = nn.ModuleList(nn.Linear(in_dim, 1) for _ in self.names)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(z).squeeze(1) for name, head in zip(self.names, self.heads, strict=True)}


class Ranker(nn.Module):
    """Base of the multi-task rankers: ``over_arch(interact(sparse_arch(x)))``.

    A variant builds its own interaction parts and implements :meth:`interact`.

    Args:
        config (RankerConfig): the model's whole configuration.
        over_dim (int): width of the representation the task heads read.
        sparse_width (int | None): columns of the embedding table, when a variant
            stores more than ``config.embed_dim`` per slot (DeepFM's first-order weights).
    """

    kind: ClassVar[str]

    def __init__(
        self, config: RankerConfig, over_dim: int, sparse_width: int | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.sparse_arch = FeatureEmbedding(
            config.vocab_size,
            sparse_width or config.embed_dim,
            config.n_cat,
            config.n_multi,
            config.n_dense,
            multi_decay=[1.0] * (config.n_multi - 1) + [config.history_decay][: config.n_multi],
        )
        self.over_arch = TaskHeads(over_dim, [t.name for t in config.tasks])

    def interact(self, fields: torch.Tensor) -> torch.Tensor:
        """Map the field embeddings ``(B, F, ·)`` to the shared representation ``(B, over_dim)``."""
        raise NotImplementedError

    def forward(self, inputs: RankerInputs) -> dict[str, torch.Tensor]:
        """Raw outputs.

        Args:
            inputs (RankerInputs): ``cat (B, F_c)``, ``multi (B, M, L)``, ``dense (B, N)``.

        Returns:
            dict[str, Tensor]: task name -> ``(B,)`` logit (binary) or value (regression).
        """
        fields = self.sparse_arch(inputs.cat, inputs.multi, inputs.dense)  # (B, F, D)
        z = self.interact(fields)  # (B, over_dim)
        return self.over_arch(z)

    def probabilities(self, inputs: RankerInputs) -> dict[str, torch.Tensor]:
        """Chained probabilities (see :func:`chain_probabilities`): task name -> ``(B,)``."""
        return chain_probabilities(self(inputs), self.config.tasks)

    def score(self, inputs: RankerInputs, weights: Mapping[str, float]) -> torch.Tensor:
        """Ranking score ``Σ_t weights[t] · p(t)``, a ``(B,)`` tensor.

        Raises:
            ConfigError: a weight names a task this ranker does not have.
        """
        return self.score_with_probabilities(inputs, weights)[0]

    def score_with_probabilities(
        self, inputs: RankerInputs, weights: Mapping[str, float]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`score` and :meth:`probabilities` from one forward pass.

        Raises:
            ConfigError: a weight names a task this ranker does not have.
        """
        unknown = set(weights) - {t.name for t in self.config.tasks}
        if unknown:
            raise ConfigError(f"score weights name unknown tasks: {sorted(unknown)}")
        probs = self.probabilities(inputs)
        total = torch.zeros(inputs.cat.shape[0], device=inputs.cat.device)  # (B,)
        for name, weight in weights.items():
            total = total + weight * probs[name]
        return total, probs


class DeepFM(Ranker):
    """DeepFM with a shared bottom and one linear head per task.

    ``z = [ Σ_f w_f ; FM(v) ; MLP(flat(v)) ]`` and ``y_t = head_t(z)``, where
    ``w_f ∈ R^T`` is field f's first-order weight (slots, multi-hot means and numeric
    projections alike), ``FM(v)`` the ``D``-vector
    ``0.5((Σ v_f)² − Σ v_f²)``, and ``MLP`` the deep part. Classic single-task DeepFM,
    ``w + Σ_{i<j}<v_i,v_j> + deep``, is the case of unit head weights on the first two
    parts; learning them lets each task weight first- and second-order terms itself.

    The first-order weights are ``T`` extra columns of the ``sparse_arch`` table, so
    one lookup per batch serves both orders: ``sparse_arch`` yields ``(B, F, D + T)``,
    split into ``v = [..., :D]`` and ``w = [..., D:]``.

    Returns (of ``forward``): task name -> ``(B,)``, over_dim = ``T + D + H``.
    """

    kind: ClassVar[str] = "deepfm"

    def __init__(self, config: RankerConfig) -> None:
        n_tasks, d = len(config.tasks), config.embed_dim
        deep_arch = MLP(config.n_fields * d, config.hidden, config.dropout, config.batch_norm)
        super().__init__(config, over_dim=n_tasks + d + deep_arch.out_dim, sparse_width=d + n_tasks)
        self.fm_arch = FactorizationMachine(reduce=False)
        self.deep_arch = deep_arch

    def interact(self, fields: torch.Tensor) -> torch.Tensor:
        d = self.config.embed_dim
        v = fields[..., :d]  # (B, F, D)
        first = fields[..., d:].sum(dim=1)  # (B, T)
        second = self.fm_arch(v)  # (B, D)
        deep = self.deep_arch(v.flatten(1))  # (B, H)
        return torch.cat([first, second, deep], dim=1)  # (B, T + D + H)


class DCNv2(Ranker):
    """DCN-v2: a cross network and a deep MLP on the flat embeddings ``x0 (B, K)``.

    Stacked: ``z = MLP(Cross(x0))``; parallel: ``z = [Cross(x0) ; MLP(x0)]``; then
    ``y_t = head_t(z)``. ``Cross`` is :class:`CrossNet` (full rank) or
    :class:`LowRankCrossNet` (``config.dcn.low_rank`` set), with
    ``config.dcn.cross_layers`` layers of ``x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l``.

    Returns (of ``forward``): task name -> ``(B,)``; over_dim = ``H`` (stacked) or ``K + H``.
    """

    kind: ClassVar[str] = "dcn"

    def __init__(self, config: RankerConfig) -> None:
        k = config.n_fields * config.embed_dim
        dcn = config.dcn
        deep_arch = MLP(k, config.hidden, config.dropout, config.batch_norm)
        stacked = dcn.structure == "stacked"
        super().__init__(config, over_dim=deep_arch.out_dim if stacked else k + deep_arch.out_dim)
        self.stacked = stacked
        self.cross_arch: nn.Module = (
            CrossNet(k, dcn.cross_layers)
            if dcn.low_rank is None
            else LowRankCrossNet(k, dcn.cross_layers, dcn.low_rank)
        )
        self.deep_arch = deep_arch

    def interact(self, fields: torch.Tensor) -> torch.Tensor:
        x0 = fields.flatten(1)  # (B, K)
        if self.stacked:
            return self.deep_arch(self.cross_arch(x0))  # (B, H)
        return torch.cat([self.cross_arch(x0), self.deep_arch(x0)], dim=1)  # (B, K + H)


RANKERS: dict[str, type[Ranker]] = {"deepfm": DeepFM, "dcn": DCNv2}


def build_ranker(kind: str, config: RankerConfig) -> Ranker:
    """Build the ranker named ``kind`` (``"deepfm"`` or ``"dcn"``).

    Raises:
        ConfigError: an unknown kind.
    """
    if kind not in RANKERS:
        raise ConfigError(f"unknown ranker {kind!r}; expected one of {sorted(RANKERS)}")
    return RANKERS[kind](config)


def final_score(
    score: torch.Tensor, retrieval_logit: torch.Tensor | None, retrieval_weight: float
) -> torch.Tensor:
    """The order the service ranks by.

    ``score = Σ_t w_t p_t`` alone when ``retrieval_weight`` is 0; otherwise the product
    of experts ``log(score) + λ·logit``, where ``logit = u·v/τ`` is the two-tower's
    evidence for the same (user, item) and ``λ = retrieval_weight``.

    Raises:
        ValueError: a positive weight without retrieval logits.
    """
    if retrieval_weight == 0:
        return score
    if retrieval_logit is None:
        raise ValueError("a positive retrieval_weight needs the retrieval logits")
    return torch.log(score.clamp_min(1e-12)) + retrieval_weight * retrieval_logit
