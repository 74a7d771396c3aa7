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
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator
from torch import nn

from shared.config import StrictConfig
from shared.errors import ConfigError
from shared.models.inputs import RankerInputs
from shared.models.layers import (
    CrossNet,
    FactorizationMachine,
    FeatureEmbedding,
    LowRankCrossNet,
    deep_network,
    mlp_head,
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
    "check_weights",
    "final_score",
    "weighted_sum",
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
    layer_norm: bool = False  # LayerNorm of each cross layer's W x + b
    stochastic_depth: float = Field(0.0, ge=0.0, lt=1.0)  # P(a row skips a layer), training


class RankerConfig(StrictConfig):
    """Everything a ranker needs to be rebuilt, and nothing else."""

    vocab_size: int = Field(ge=2)
    n_cat: NonNegativeInt
    n_multi: NonNegativeInt
    n_dense: NonNegativeInt
    # each dense field's width (1: a number, else a pretrained vector); None: all numbers
    dense_widths: tuple[PositiveInt, ...] | None = None
    embed_dim: PositiveInt = 16
    hidden: tuple[PositiveInt, ...] = (256, 128)
    dropout: float | tuple[float, ...] = 0.0  # one for every deep layer, or one each
    batch_norm: bool = False
    # the deep layers: Linear → (BatchNorm) → ReLU → Dropout, or residual blocks
    # Linear → LayerNorm → GELU → Dropout with identity or projected skips
    deep_block: Literal["mlp", "residual"] = "mlp"
    # each task's head: Linear(·, 1) alone, or an MLP of these sizes before it
    head_hidden: tuple[PositiveInt, ...] = ()
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    head_batch_norm: bool = False
    tasks: tuple[TaskHead, ...] = Field(min_length=1)
    dcn: DCNConfig = DCNConfig()
    # pooling decay of the last multi-hot field: the user's recent items, most recent first
    history_decay: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> RankerConfig:
        if self.n_fields == 0:
            raise ValueError("a ranker needs at least one feature field")
        rates = (self.dropout,) if isinstance(self.dropout, float) else self.dropout
        if not all(0 <= p < 1 for p in rates) or len(rates) not in (1, len(self.hidden)):
            raise ValueError(
                f"dropout needs one value in [0, 1) or one per hidden layer "
                f"({len(self.hidden)}), got {self.dropout}"
            )
        if self.deep_block == "residual" and self.batch_norm:
            raise ValueError("deep_block residual normalises with LayerNorm; batch_norm is for mlp")
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


def check_weights(weights: Mapping[str, float], tasks: Sequence[TaskHead]) -> None:
    """Raises ConfigError when a score weight names a task the ranker does not have."""
    unknown = set(weights) - {t.name for t in tasks}
    if unknown:
        raise ConfigError(f"score weights name unknown tasks: {sorted(unknown)}")


def weighted_sum(probs: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``Σ_t weights[t] · probs[t]``, ``(B,)``."""
    total = torch.zeros_like(next(iter(probs.values())))  # (B,)
    for name, weight in weights.items():
        total = total + weight * probs[name]
    return total


class TaskHeads(nn.Module):
    """Over arch: one head per task on a shared representation, ``Linear(in_dim, 1)``
    or, with ``hidden``, ``Linear(MLP(z))`` (a task tower: its own layers, BatchNorm,
    dropout).

    Heads are kept in task order (a ``ModuleList``, so any task name is allowed).

    Call:
        z (Tensor): ``(B, in_dim)``.

    Returns:
        dict[str, Tensor]: task name -> ``(B,)``.
    """

    def __init__(
        self, in_dim: int, names: Sequence[str], hidden: tuple[int, ...] = (),
        dropout: float = 0.0, batch_norm: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.names = tuple(names)
        self.heads = nn.ModuleList(
            mlp_head(in_dim, hidden, 1, dropout, batch_norm) if hidden else nn.Linear(in_dim, 1)
            for _ in self.names
        )

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
            dense_widths=config.dense_widths,
        )
        self.over_arch = TaskHeads(
            over_dim, [t.name for t in config.tasks], config.head_hidden, config.head_dropout,
            config.head_batch_norm,
        )  # fmt: skip

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
        return self.head(self.sparse_arch(inputs.cat, inputs.multi, inputs.dense))

    def head(self, fields: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs from the field embeddings ``(B, F, ·)`` (everything after ``sparse_arch``)."""
        return self.over_arch(self.interact(fields))

    # --- the split form serving uses --------------------------------------------------
    def first_weight(self) -> torch.Tensor:
        """The linear maps applied straight to the flat fields, stacked: ``(P, F·W)``.

        ``flat(fields) @ first_weight().T`` is a sum of per-field terms, so the gateway
        adds up terms precomputed per item, per user and per context instead of
        multiplying ``(B, F·W)`` by it per request (see :meth:`head_from_first`).
        """
        raise NotImplementedError

    def head_from_first(self, fields: torch.Tensor, first: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`head`, given ``first = flat(fields) @ first_weight().T`` ``(B, P)``."""
        raise NotImplementedError

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
        fields = self.sparse_arch(inputs.cat, inputs.multi, inputs.dense)  # (B, F, ·)
        return self.score_fields(fields, weights)

    def score_fields(
        self, fields: torch.Tensor, weights: Mapping[str, float]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`score_with_probabilities` from the field embeddings ``(B, F, ·)``.

        Raises:
            ConfigError: a weight names a task this ranker does not have.
        """
        check_weights(weights, self.config.tasks)
        probs = chain_probabilities(self.head(fields), self.config.tasks)
        return weighted_sum(probs, weights), probs


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
        deep_arch = _deep(config, config.n_fields * d)
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

    def first_weight(self) -> torch.Tensor:
        c = self.config
        if not c.hidden:
            return torch.zeros(0, c.n_fields * (c.embed_dim + len(c.tasks)))
        w = self.deep_arch.first_linear.weight.view(
            -1, c.n_fields, c.embed_dim
        )  # (H1, F, D), v only
        return F.pad(w, (0, len(c.tasks))).flatten(1)  # (H1, F·(D + T)), 0 on the first-order part

    def head_from_first(self, fields: torch.Tensor, first: torch.Tensor) -> dict[str, torch.Tensor]:
        d = self.config.embed_dim
        v = fields[..., :d]  # (B, F, D)
        deep = (
            self.deep_arch.from_first(first, v.flatten(1)) if self.config.hidden
            else self.deep_arch(v.flatten(1))
        )  # (B, H)  # fmt: skip
        z = torch.cat([fields[..., d:].sum(dim=1), self.fm_arch(v), deep], dim=1)
        return self.over_arch(z)


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
        deep_arch = _deep(config, k)
        stacked = dcn.structure == "stacked"
        super().__init__(config, over_dim=deep_arch.out_dim if stacked else k + deep_arch.out_dim)
        self.stacked = stacked
        self.cross_arch: CrossNet | LowRankCrossNet = (
            CrossNet(k, dcn.cross_layers, dcn.layer_norm, dcn.stochastic_depth)
            if dcn.low_rank is None
            else LowRankCrossNet(
                k, dcn.cross_layers, dcn.low_rank, dcn.layer_norm, dcn.stochastic_depth
            )
        )
        self.deep_arch = deep_arch

    def interact(self, fields: torch.Tensor) -> torch.Tensor:
        x0 = fields.flatten(1)  # (B, K)
        if self.stacked:
            return self.deep_arch(self.cross_arch(x0))  # (B, H)
        return torch.cat([self.cross_arch(x0), self.deep_arch(x0)], dim=1)  # (B, K + H)

    def _first_linears(self) -> list[nn.Linear]:
        """The cross net's first kernel and, in parallel, the deep part's first layer."""
        out = []
        if self.config.dcn.cross_layers:
            cross = self.cross_arch
            out.append(cross.down[0] if isinstance(cross, LowRankCrossNet) else cross.layers[0])
        if not self.stacked and self.config.hidden:
            out.append(self.deep_arch.first_linear)
        return out

    def first_weight(self) -> torch.Tensor:
        k = self.config.n_fields * self.config.embed_dim
        return torch.cat([m.weight for m in self._first_linears()] or [torch.zeros(0, k)])

    def head_from_first(self, fields: torch.Tensor, first: torch.Tensor) -> dict[str, torch.Tensor]:
        x0 = fields.flatten(1)  # (B, K)
        linears = self._first_linears()
        parts = first.split([m.out_features for m in linears], dim=1) if linears else ()
        cross = self.cross_arch
        xl = x0
        if self.config.dcn.cross_layers:
            # layer 0 with its kernel applied already, then the other layers as in forward
            pre = parts[0]
            if isinstance(cross, LowRankCrossNet):
                pre = cross.up[0](pre)
            else:
                pre = pre + cross.layers[0].bias
            xl = cross.update(0, x0, x0, pre)
            for l in range(1, self.config.dcn.cross_layers):  # noqa: E741
                xl = cross.update(l, x0, xl, cross.kernel(l, xl))
        if self.stacked:
            z = self.deep_arch(xl)
        elif self.config.hidden:
            z = torch.cat([xl, self.deep_arch.from_first(parts[-1], x0)], dim=1)
        else:
            z = torch.cat([xl, self.deep_arch(x0)], dim=1)
        return self.over_arch(z)


def _deep(config: RankerConfig, in_dim: int) -> nn.Module:
    dropout = config.dropout if isinstance(config.dropout, float) or len(config.dropout) > 1 \
        else config.dropout[0]  # fmt: skip
    return deep_network(in_dim, config.hidden, dropout, config.batch_norm, config.deep_block)


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
