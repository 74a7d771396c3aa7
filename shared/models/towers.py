"""Two-tower (DSSM) retrieval: a user tower and an item tower over one embedding table.

Each tower mixes an id embedding with a representation of its features through a
learned gate (:class:`GatedFusion`), so a cold user or item, which carries its
column's out-of-vocabulary id, leans on its features; then an MLP maps the mix to an
L2-normalised vector. The user's features include a recency-weighted mean embedding of its
recent items, looked up in the same table as the item tower's item ids: history and item
towers share item-id embeddings.

The towers are separate classes so that the gateway can load only the user tower
(``save_model(two_tower.user_tower, config, prefix)``); :class:`TwoTower` holds both
for training. The temperature is fixed (``TowerConfig.temperature``), not learned:
with normalised vectors it sets how peaked the in-batch softmax is, and a fixed value
keeps runs comparable.

Retrieval scores ``u·v/τ + β·log q_i``: the towers' cosine plus a popularity prior,
``q_i`` the item's share of the training interactions and ``β``
(``TowerConfig.popularity_prior``, chosen after training on validation) its weight.
Training is popularity-neutral (the logQ correction takes popularity out of the
sampled softmax); the prior puts back as much as held-out data asks for. It lives in
the serving vectors, one extra coordinate each (:meth:`UserTower.vector`,
:meth:`ItemTower.vector`), so that FAISS, the batch recall lists, the evaluation and the
gateway's logit all score ``u'·v'/τ`` alike. A new item (no training interactions)
has no ``q_i`` of its own; with ``content_prior`` (weight ``γ``) it scores
``u·v/τ + β·m + γ·(p_i − m)``, ``p_i`` its ``log q`` as a linear model of its features
predicts (content, not the towers' vector, carries it: training took popularity out of
the towers) and ``m`` the trained items' mean ``log q``, through a second extra
coordinate; without, its ``log q_i`` is the OOV slot's.

Legend: B batch, D embedding dimension, O output dimension, F embedded feature fields
of a tower, H history length, V vocabulary (feature slots).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import nn

from shared.config import StrictConfig
from shared.models.inputs import ItemInputs, UserInputs
from shared.models.layers import FeatureEmbedding, GatedFusion, SequenceEncoder, mlp_head

__all__ = ["Fusion", "ItemTower", "TowerConfig", "TwoTower", "UserTower"]


Fusion = Literal["gate", "sum", "concat", "id", "features"]


class TowerConfig(StrictConfig):
    """Everything the two towers need to be rebuilt."""

    vocab_size: int = Field(ge=2)
    n_user_cat: NonNegativeInt
    n_user_multi: NonNegativeInt
    n_user_dense: NonNegativeInt
    n_item_cat: NonNegativeInt
    n_item_multi: NonNegativeInt
    n_item_dense: NonNegativeInt
    # each dense field's width (1: a number, else a pretrained vector); None: all numbers
    user_dense_widths: tuple[PositiveInt, ...] | None = None
    item_dense_widths: tuple[PositiveInt, ...] | None = None
    embed_dim: PositiveInt = 32
    out_dim: PositiveInt = 64
    hidden: tuple[PositiveInt, ...] = (128,)
    # per tower, in place of ``hidden`` (None: ``hidden``)
    user_hidden: tuple[PositiveInt, ...] | None = None
    item_hidden: tuple[PositiveInt, ...] | None = None
    # how a tower mixes its id embedding with its features: a learned gate, their sum, a
    # linear map of both, the id alone, or the features alone (no id: every entity is
    # placed by its features, as a cold one is)
    fusion: Fusion = "gate"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False  # BatchNorm1d inside each tower's MLP layers
    # cosine: unit output vectors (u·v/τ is a cosine over τ); dot: the raw inner product
    similarity: Literal["cosine", "dot"] = "cosine"
    temperature: float = Field(0.05, gt=0.0)  # fixed, not learned
    history_decay: float = Field(1.0, gt=0.0, le=1.0)  # pooling weight ratio of older items
    # how the user's recent items become one vector: a recency-weighted mean, or
    # self-attention over them (shared.models.layers.SequenceEncoder)
    user_encoder: Literal["mean", "transformer"] = "mean"
    history_length: int = Field(20, ge=1)  # H, for the transformer's positions
    encoder_layers: int = Field(2, ge=1)
    encoder_heads: int = Field(2, ge=1)
    # β of the retrieval score u·v/τ + β·log q_i (0: the towers' cosine alone)
    popularity_prior: float = Field(0.0, ge=0.0)
    # γ: the weight of a new item's (its id out of vocabulary) predicted log q around the
    # mean, a linear model of its features (TwoTower.set_content_prior); None: none, the
    # item takes the OOV slot's log q
    content_prior: float | None = Field(None, ge=0.0)
    content_prior_l2: float = Field(0.0, ge=0.0)  # the ridge penalty it was fitted with

    @property
    def vector_dim(self) -> int:
        """Width of the serving vectors: ``O`` unit coordinates, the prior's and the
        content prior's (when on)."""
        return self.out_dim + 1 + (self.content_prior is not None)


class _Tower(nn.Module):
    """Shared body of both towers: ``gate(id, feat) -> MLP -> Linear -> L2-normalise``
    (``similarity="dot"``: not normalised).

    ``feat = Linear(MLP(flat(fields [; extra])))`` is signed and ``D`` wide, like the
    id embedding. A tower with no feature fields and no extra input uses the id alone
    (no gate).

    Args:
        config (TowerConfig): both towers' configuration.
        n_cat, n_multi, n_dense (int): this tower's feature fields.
        n_extra (int): extra ``D``-vectors appended to the fields (the user's history).
        embedding (nn.Embedding | None): the table to share; a new one when ``None``.
    """

    def __init__(
        self,
        config: TowerConfig,
        n_cat: int,
        n_multi: int,
        n_dense: int,
        n_extra: int,
        embedding: nn.Embedding | None,
        dense_widths: tuple[int, ...] | None = None,
        hidden: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        d = config.embed_dim
        hidden = config.hidden if hidden is None else hidden
        self.config = config
        self.sparse_arch = FeatureEmbedding(
            config.vocab_size, d, n_cat, n_multi, n_dense, embedding, dense_widths=dense_widths
        )
        n_in = (n_cat + n_multi + n_dense + n_extra) * d
        if config.fusion == "id":
            n_in = 0  # the features are not read
        elif config.fusion == "features" and not n_in:
            raise ValueError("fusion 'features' needs feature fields")
        bn = config.batch_norm
        self.feature_arch = mlp_head(n_in, hidden, d, config.dropout, bn) if n_in else None
        self.fusion = (
            GatedFusion(d) if config.fusion == "gate"
            else nn.Linear(2 * d, d) if config.fusion == "concat"
            else None
        ) if n_in else None  # fmt: skip
        self.over_arch = mlp_head(d, hidden, config.out_dim, config.dropout, bn)

    @property
    def embedding(self) -> nn.Embedding:
        """The (possibly shared) embedding table, ``(vocab_size, D)``."""
        return self.sparse_arch.embedding

    def _fuse(
        self,
        ids: torch.Tensor,
        cat: torch.Tensor,
        multi: torch.Tensor,
        dense: torch.Tensor,
        extra: list[torch.Tensor],
    ) -> torch.Tensor:
        id_emb = self.embedding(ids)  # (B, D)
        if self.feature_arch is None:
            return id_emb
        fields = self.sparse_arch(cat, multi, dense).flatten(1)  # (B, F·D)
        feat = self.feature_arch(torch.cat([fields, *extra], dim=1))  # (B, D)
        mode = self.config.fusion
        if mode == "features":
            return feat
        if mode == "sum":
            return id_emb + feat
        if mode == "concat":
            return self.fusion(torch.cat([id_emb, feat], dim=1))  # type: ignore[misc]
        return self.fusion(id_emb, feat)  # type: ignore[misc]  # (B, D) gated

    def _project(self, fused: torch.Tensor) -> torch.Tensor:
        out = self.over_arch(fused)  # (B, O)
        return F.normalize(out, dim=-1) if self.config.similarity == "cosine" else out


class UserTower(_Tower):
    """User tower: id, user features and a recency-weighted mean of recent items.

    ``feat = Linear(MLP([flat(fields); hist]))`` with ``hist = Σ_j w_j·E[h_j] / Σ_j w_j``,
    ``w_j = decay**j`` for the j-th most recent item (0 for padding), or, with
    ``user_encoder="transformer"``, ``hist = SequenceEncoder(h)``;
    ``fused = g·E[id] + (1 − g)·feat``, ``u = normalize(Linear(MLP(fused)))``.

    Args:
        config (TowerConfig): both towers' configuration.
        embedding (nn.Embedding | None): table shared with the item tower.

    Call:
        inputs (UserInputs): ``id (B,)``, ``cat (B, Fu)``, ``multi (B, Mu, L)``,
            ``dense (B, Nu)``, ``history (B, H)``.

    Returns:
        Tensor: ``(B, O)``, unit L2 norm.
    """

    kind: ClassVar[str] = "user_tower"

    def __init__(self, config: TowerConfig, embedding: nn.Embedding | None = None) -> None:
        c = config
        super().__init__(
            c, c.n_user_cat, c.n_user_multi, c.n_user_dense, 1, embedding, c.user_dense_widths,
            c.user_hidden,
        )  # fmt: skip
        self.sequence_arch = (
            SequenceEncoder(
                self.embedding, c.history_length, c.encoder_layers, c.encoder_heads, c.dropout
            )
            if c.user_encoder == "transformer"
            else None
        )

    def history(self, slots: torch.Tensor) -> torch.Tensor:
        """The user's recent items as one ``(B, D)`` vector (mean pool or self-attention)."""
        if self.sequence_arch is not None:
            return self.sequence_arch(slots)
        return self.sparse_arch.pool(slots, self.config.history_decay)

    def fused(self, inputs: UserInputs) -> torch.Tensor:
        """The gated mix of id and features, ``(B, D)``, before the output MLP."""
        history = self.history(inputs.history)  # (B, D)
        return self._fuse(inputs.id, inputs.cat, inputs.multi, inputs.dense, [history])

    def forward(self, inputs: UserInputs) -> torch.Tensor:
        return self._project(self.fused(inputs))  # (B, O)

    def vector(self, inputs: UserInputs) -> torch.Tensor:
        """The serving vector ``[u; β·τ]`` (``[u; β·τ; γ·τ]`` with a content prior),
        ``(B, vector_dim)``: against :meth:`ItemTower.vector`, ``u'·v'/τ = u·v/τ + β·log q_i``
        (``+ γ·(p_i − m)`` for a new item)."""
        u = self(inputs)  # (B, O)
        c = self.config
        weights = [c.popularity_prior] + ([c.content_prior] if c.content_prior is not None else [])
        prior = torch.tensor(weights, dtype=u.dtype) * c.temperature
        return torch.cat([u, prior.expand(len(u), -1)], dim=1)  # (B, vector_dim)


class ItemTower(_Tower):
    """Item tower: id and item features.

    ``feat = Linear(MLP(flat(fields)))``, ``fused = g·E[id] + (1 − g)·feat``,
    ``v = normalize(Linear(MLP(fused)))``; with no item features, ``fused = E[id]``.

    Args:
        config (TowerConfig): both towers' configuration.
        embedding (nn.Embedding | None): table shared with the user tower.

    Call:
        inputs (ItemInputs): ``id (B,)``, ``cat (B, Fi)``, ``multi (B, Mi, L)``, ``dense (B, Ni)``.

    Returns:
        Tensor: ``(B, O)``, unit L2 norm.
    """

    kind: ClassVar[str] = "item_tower"

    def __init__(self, config: TowerConfig, embedding: nn.Embedding | None = None) -> None:
        c = config
        super().__init__(
            c, c.n_item_cat, c.n_item_multi, c.n_item_dense, 0, embedding, c.item_dense_widths,
            c.item_hidden,
        )  # fmt: skip
        # (V,) log q of each item-id slot (the training interactions' share), for the prior
        self.register_buffer("log_popularity", torch.zeros(c.vocab_size))
        if c.content_prior is not None:  # a new item's log q: bias + Σ w[its slots] + dense·w
            widths = c.item_dense_widths or (1,) * c.n_item_dense
            self.register_buffer("prior_slots", torch.zeros(c.vocab_size))
            self.register_buffer("prior_dense", torch.zeros(sum(widths)))
            self.register_buffer("prior_bias", torch.zeros(()))
            self.register_buffer("prior_mean", torch.zeros(()))  # the trained items' mean
            self.register_buffer("new_slot", torch.tensor(-1))  # the item_id OOV slot

    def fused(self, inputs: ItemInputs) -> torch.Tensor:
        """The gated mix of id and features, ``(B, D)``, before the output MLP."""
        return self._fuse(inputs.id, inputs.cat, inputs.multi, inputs.dense, [])

    def forward(self, inputs: ItemInputs) -> torch.Tensor:
        return self._project(self.fused(inputs))  # (B, O)

    def vector(self, inputs: ItemInputs) -> torch.Tensor:
        """The serving vector ``[v; log q_i]``, ``(B, O + 1)``; with a content prior
        ``[v; log q_i; 0]``, and ``[v; m; p_i − m]`` for a new item (see
        :meth:`UserTower.vector`)."""
        prior = self.log_popularity[inputs.id].unsqueeze(1)  # (B, 1)
        if self.config.content_prior is not None:
            w = self.prior_slots
            predicted = (
                self.prior_bias + w[inputs.cat].sum(1) + w[inputs.multi].sum((1, 2))
                + inputs.dense @ self.prior_dense
            )  # fmt: skip
            new = (inputs.id == self.new_slot).unsqueeze(1)  # (B, 1)
            spread = torch.where(new, predicted.unsqueeze(1) - self.prior_mean, 0.0)
            prior = torch.cat([torch.where(new, self.prior_mean, prior), spread], dim=1)
        return torch.cat([self(inputs), prior], dim=1)  # (B, vector_dim)


class TwoTower(nn.Module):
    """Both towers over one shared embedding table, for training and batch indexing.

    ``logit(u, i) = cos(user_tower(u), item_tower(i)) / τ`` with fixed ``τ``.

    Args:
        config (TowerConfig): both towers' configuration.
    """

    kind: ClassVar[str] = "two_tower"

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        self.user_tower = UserTower(config)
        self.item_tower = ItemTower(config, embedding=self.user_tower.embedding)

    def user_embed(self, user: UserInputs) -> torch.Tensor:
        """User vectors, ``(B, O)``, unit norm."""
        return self.user_tower(user)

    def item_embed(self, item: ItemInputs) -> torch.Tensor:
        """Item vectors, ``(B, O)``, unit norm."""
        return self.item_tower(item)

    def set_popularity_prior(self, log_popularity: torch.Tensor, weight: float) -> None:
        """The prior of the serving vectors: ``log q`` per slot ``(V,)`` and its weight ``β``."""
        self.item_tower.log_popularity.copy_(log_popularity)
        self._update(popularity_prior=float(weight))

    def set_content_prior(
        self,
        slots: torch.Tensor,
        dense: torch.Tensor,
        bias: float,
        mean: float,
        new_slot: int,
        weight: float,
        l2: float,
    ) -> None:
        """A new item's predicted ``log q``: ``bias + Σ slots[its slots] + dense·its dense
        columns`` (``slots`` ``(V,)``, padding 0), for items whose id is ``new_slot`` (the
        item_id OOV slot), around ``mean``; ``weight`` is its ``γ``, ``l2`` the ridge
        penalty it was fitted with (a record)."""
        t = self.item_tower
        t.prior_slots.copy_(slots)
        t.prior_dense.copy_(dense)
        t.prior_bias.fill_(bias)
        t.prior_mean.fill_(mean)
        t.new_slot.fill_(new_slot)
        self._update(content_prior=float(weight), content_prior_l2=float(l2))

    def _update(self, **changes: float) -> None:
        self.config = self.config.model_copy(update=changes)
        self.user_tower.config = self.item_tower.config = self.config

    def forward(self, user: UserInputs, item: ItemInputs) -> torch.Tensor:
        """Row-wise logits ``cos(u_b, v_b) / τ``, ``(B,)`` (training: no prior)."""
        u, v = self.user_embed(user), self.item_embed(item)  # (B, O), (B, O)
        return (u * v).sum(dim=-1) / self.config.temperature  # (B,)
