"""Reusable blocks of the rankers and towers: loss-free, I/O-free ``nn.Module`` s.

Legend used in every docstring and shape comment:

- B: batch size
- F: number of embedded fields (categorical + multi-hot + numeric)
- D: embedding dimension
- K: width of a flat feature vector (usually ``F * D``)
- L: slots per multi-hot field
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CrossNet",
    "FactorizationMachine",
    "FeatureEmbedding",
    "GatedFusion",
    "LowRankCrossNet",
    "MLP",
    "ResidualMLP",
    "SequenceEncoder",
    "deep_network",
    "mlp_head",
]


def _per_layer(dropout: float | Sequence[float], n: int) -> list[float]:
    """One dropout probability per layer: a float for all, or one each."""
    rates = (
        [float(dropout)] * n if isinstance(dropout, int | float) else [float(p) for p in dropout]
    )
    if len(rates) != n or not all(0 <= p < 1 for p in rates):
        raise ValueError(f"dropout needs one value in [0, 1) or {n} of them, got {dropout}")
    return rates


class MLP(nn.Sequential):
    """Stack of ``Linear -> (BatchNorm1d) -> ReLU -> Dropout`` layers.

    Every layer, the last included, ends in ReLU (as TorchRec's ``MLP``); put a plain
    ``nn.Linear`` after it where signed outputs are needed (see :func:`mlp_head`).
    With ``hidden=()`` it is the identity.

    Args:
        in_dim (int): width of the input.
        hidden (tuple[int, ...]): width of each layer.
        dropout (float | Sequence[float]): dropout probability after each activation,
            one for all layers or one per layer.
        batch_norm (bool): add ``BatchNorm1d`` between each Linear and its ReLU.

    Call:
        x (Tensor): ``(B, in_dim)``.

    Returns:
        Tensor: ``(B, out_dim)`` where ``out_dim = hidden[-1]`` (``in_dim`` if empty).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: tuple[int, ...],
        dropout: float | Sequence[float] = 0.0,
        batch_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        width = in_dim
        for h, p in zip(hidden, _per_layer(dropout, len(hidden)), strict=True):
            layers.append(nn.Linear(width, h, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(
                nn.ReLU(inplace=True)
            )  # safe: Linear/BatchNorm backward never reads their output
            if p > 0:
                layers.append(nn.Dropout(p))
            width = h
        super().__init__(*layers)
        self.out_dim = width

    @property
    def first_linear(self) -> nn.Linear:
        """The first layer's ``Linear`` (the gateway precomputes its per-field terms)."""
        return self[0]

    def from_first(self, first: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The output given ``first = x @ first_linear.weight.T`` ``(B, H1)`` (no bias)."""
        layer = self[0]
        out = first if layer.bias is None else first + layer.bias
        for module in list(self)[1:]:
            out = module(out)
        return out


class ResidualMLP(nn.Module):
    """Stack of residual blocks ``y = Dropout(GELU(LayerNorm(Linear(x)))) + skip(x)``.

    ``skip`` is the identity where a block keeps the width, a bias-free ``Linear``
    projection where it changes it. With ``hidden=()`` it is the identity.

    Args:
        in_dim (int): width of the input.
        hidden (tuple[int, ...]): width of each block.
        dropout (float | Sequence[float]): one probability, or one per block.

    Call:
        x (Tensor): ``(B, in_dim)``.

    Returns:
        Tensor: ``(B, out_dim)``, ``out_dim = hidden[-1]`` (``in_dim`` if empty).
    """

    def __init__(
        self, in_dim: int, hidden: tuple[int, ...], dropout: float | Sequence[float] = 0.0
    ) -> None:
        super().__init__()
        self.linears, self.norms, self.skips = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.drops = nn.ModuleList()
        width = in_dim
        for h, p in zip(hidden, _per_layer(dropout, len(hidden)), strict=True):
            self.linears.append(nn.Linear(width, h))
            self.norms.append(nn.LayerNorm(h))
            self.skips.append(nn.Identity() if h == width else nn.Linear(width, h, bias=False))
            self.drops.append(nn.Dropout(p) if p > 0 else nn.Identity())
            width = h
        self.out_dim = width

    @property
    def first_linear(self) -> nn.Linear:
        return self.linears[0]

    def _block(self, j: int, pre: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.drops[j](F.gelu(self.norms[j](pre))) + self.skips[j](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, linear in enumerate(self.linears):
            x = self._block(j, linear(x), x)
        return x

    def from_first(self, first: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The output given ``first = x @ first_linear.weight.T`` ``(B, H1)`` (no bias)."""
        x = self._block(0, first + self.linears[0].bias, x)
        for j in range(1, len(self.linears)):
            x = self._block(j, self.linears[j](x), x)
        return x


def deep_network(
    in_dim: int,
    hidden: tuple[int, ...],
    dropout: float | Sequence[float] = 0.0,
    batch_norm: bool = False,
    block: str = "mlp",
) -> MLP | ResidualMLP:
    """The deep part of a ranker: an :class:`MLP` or (``block="residual"``) a
    :class:`ResidualMLP`."""
    if block == "residual":
        return ResidualMLP(in_dim, hidden, dropout)
    return MLP(in_dim, hidden, dropout, batch_norm)


def mlp_head(
    in_dim: int,
    hidden: tuple[int, ...],
    out_dim: int,
    dropout: float | Sequence[float] = 0.0,
    batch_norm: bool = False,
) -> nn.Sequential:
    """An :class:`MLP` followed by a plain ``Linear(…, out_dim)``: signed outputs.

    Returns:
        nn.Sequential: maps ``(B, in_dim)`` to ``(B, out_dim)``.
    """
    mlp = MLP(in_dim, hidden, dropout, batch_norm)
    return nn.Sequential(mlp, nn.Linear(mlp.out_dim, out_dim))


class FeatureEmbedding(nn.Module):
    """Embeds every field of a row into one ``D``-vector per field.

    One ``nn.Embedding(vocab_size, D, padding_idx=0)`` serves all categorical and
    multi-hot columns (the slot ids of all columns live in one vocabulary)::

        e_f = E[cat_f]                                  for each categorical field f
        e_m = Σ_j r_m^j·E[s_j] / Σ_j r_m^j over s_j != 0  for each multi-hot field m (0 if empty)
        e_n = x_n * w_n + b_n                           for each numeric field n, w_n, b_n in R^D
        e_v = W_v x_v + b_v                              for each vector field v (a pretrained
                                                         vector, ``dense_widths[v]`` wide)

    ``r_m`` is field m's pooling decay (``multi_decay``, 1.0 = plain mean; below 1 the
    first slots, e.g. a history's most recent items, count most). Each part is one
    batched op (a lookup, an ``embedding_bag``, a broadcast product), never a loop over
    fields.

    Args:
        vocab_size (int): number of slots (slot 0 is padding).
        embed_dim (int): D.
        n_cat (int): categorical fields (may be 0).
        n_multi (int): multi-hot fields (may be 0).
        n_dense (int): numeric and vector fields (may be 0).
        dense_widths (Sequence[int] | None): the width of each of them in ``dense``'s
            columns, in order: 1 for a number, the vector's length for a vector; all 1
            when ``None``.
        embedding (nn.Embedding | None): a table to share with another module (its
            width must be ``embed_dim``); a new one when ``None``.
        multi_decay (Sequence[float] | None): pooling decay per multi-hot field; all 1.0
            when ``None``.
        init_std (float): std of the normal init of new embedding rows and numeric weights.

    Call:
        cat (Tensor): ``(B, n_cat)`` int64 slot ids.
        multi (Tensor): ``(B, n_multi, L)`` int64 slot ids, 0 = padding.
        dense (Tensor): ``(B, Σ dense_widths)`` float.

    Returns:
        Tensor: ``(B, F, D)`` with ``F = n_cat + n_multi + n_dense``, in that order.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        n_cat: int,
        n_multi: int,
        n_dense: int,
        embedding: nn.Embedding | None = None,
        multi_decay: Sequence[float] | None = None,
        init_std: float = 0.01,
        dense_widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        widths = list(dense_widths) if dense_widths is not None else [1] * n_dense
        if len(widths) != n_dense or min(widths, default=1) < 1:
            raise ValueError(f"dense_widths needs {n_dense} widths ≥ 1, got {dense_widths}")
        decay = torch.tensor(multi_decay if multi_decay is not None else [1.0] * n_multi)
        if decay.shape != (n_multi,) or not bool(((decay > 0) & (decay <= 1)).all()):
            raise ValueError(f"multi_decay needs {n_multi} values in (0, 1], got {multi_decay}")
        self.register_buffer("multi_decay", decay[:, None], persistent=False)  # (M, 1)
        self.plain_mean = bool((decay == 1.0).all())  # the fast path: no weights to build
        if embedding is None:
            embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
            nn.init.normal_(embedding.weight, std=init_std)
            with torch.no_grad():
                embedding.weight[0].zero_()
        elif embedding.embedding_dim != embed_dim or embedding.num_embeddings != vocab_size:
            raise ValueError(
                f"shared embedding is {embedding.num_embeddings}x{embedding.embedding_dim}, "
                f"expected {vocab_size}x{embed_dim}"
            )
        self.embedding = embedding
        self.n_cat, self.n_multi, self.n_dense = n_cat, n_multi, n_dense
        self.embed_dim = embed_dim
        self.n_fields = n_cat + n_multi + n_dense
        starts = np.cumsum([0, *widths])
        self.dense_width = int(starts[-1])
        scalar = [j for j, w in enumerate(widths) if w == 1]
        self._scalar_columns = starts[scalar].tolist()
        # (column range, field) of each vector field; scalars first, then their places
        self._vectors = [(int(starts[j]), int(starts[j + 1]), j) for j, w in enumerate(widths)
                         if w > 1]  # fmt: skip
        self._order = None
        if self._vectors:
            placed = scalar + [j for _, _, j in self._vectors]
            self._order = torch.from_numpy(np.argsort(placed))
        n_scalar = len(scalar)
        # No zero-size parameters: they would break "every parameter gets a gradient".
        self.dense_weight = (
            nn.Parameter(torch.randn(n_scalar, embed_dim) * init_std) if n_scalar else None
        )
        self.dense_bias = nn.Parameter(torch.zeros(n_scalar, embed_dim)) if n_scalar else None
        self.vector_proj = nn.ModuleList(
            nn.Linear(hi - lo, embed_dim) for lo, hi, _ in self._vectors
        )

    def forward(self, cat: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        b = cat.shape[0]
        if (
            cat.shape[1] != self.n_cat
            or multi.shape[1] != self.n_multi
            or dense.shape[1] != self.dense_width
        ):
            raise ValueError(
                f"expected {self.n_cat} categorical, {self.n_multi} multi-hot, {self.n_dense} "
                f"numeric fields ({self.dense_width} columns), got cat {tuple(cat.shape)}, multi {tuple(multi.shape)}, "
                f"dense {tuple(dense.shape)}"
            )
        parts = [self.embedding(cat)]  # (B, Fc, D)
        if self.n_multi:
            decay = 1.0 if self.plain_mean else self.multi_decay.repeat(b, 1)  # (B·M, 1)
            parts.append(
                self.pool(multi.reshape(b * self.n_multi, -1), decay).view(b, self.n_multi, -1)
            )
        if self.n_dense and not self._vectors:
            parts.append(dense.unsqueeze(-1) * self.dense_weight + self.dense_bias)  # (B, N, D)
        elif self.n_dense:
            fields = []
            if self.dense_weight is not None:
                x = dense[:, self._scalar_columns]  # (B, N_scalar)
                fields.append(x.unsqueeze(-1) * self.dense_weight + self.dense_bias)
            fields += [proj(dense[:, lo:hi])[:, None] for proj, (lo, hi, _) in
                       zip(self.vector_proj, self._vectors, strict=True)]  # fmt: skip
            parts.append(torch.cat(fields, dim=1)[:, self._order])  # (B, N, D) in field order
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, F, D)

    def pool(self, slots: torch.Tensor, decay: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Weighted mean of the embeddings of the non-padding slots of each row.

        Slot ``j`` weighs ``decay**j``: 1.0 is the plain mean; below 1 the first slots
        (a history's most recent items) count most.

        Args:
            slots (Tensor): ``(B, L)`` int64, 0 = padding.
            decay (float | Tensor): weight ratio of consecutive slots, in (0, 1]; a
                ``(B, 1)`` tensor gives each row its own.

        Returns:
            Tensor: ``(B, D)``; all-padding rows are zero.
        """
        if slots.shape[1] == 0:
            return self.embedding.weight.new_zeros(slots.shape[0], self.embed_dim)
        if isinstance(decay, float) and decay == 1.0:
            return F.embedding_bag(
                slots, self.embedding.weight, mode="mean", padding_idx=0,
                sparse=self.embedding.sparse,
            )  # fmt: skip
        steps = torch.arange(slots.shape[1], dtype=self.embedding.weight.dtype)
        weights = (slots != 0) * decay**steps  # (B, L)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return F.embedding_bag(
            slots, self.embedding.weight, mode="sum", per_sample_weights=weights, padding_idx=0,
            sparse=self.embedding.sparse,
        )  # fmt: skip


class FactorizationMachine(nn.Module):
    """Second-order term of a factorization machine over field embeddings.

    ``p = 0.5 * ((sum_f v_f)^2 - sum_f v_f^2)`` (elementwise), so that
    ``sum_d p_d = sum_{i<j} <v_i, v_j>``, in O(F·D) instead of O(F²·D).

    Args:
        reduce (bool): sum over D (the classic FM scalar) or keep the ``D``-vector
            (the "bi-interaction" vector, which a linear head can weight per task).

    Call:
        fields (Tensor): ``(B, F, D)``.

    Returns:
        Tensor: ``(B, 1)`` if ``reduce`` else ``(B, D)``.
    """

    def __init__(self, reduce: bool = True) -> None:
        super().__init__()
        self.reduce = reduce

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        square_of_sum = fields.sum(dim=1).square()  # (B, D)
        sum_of_square = fields.square().sum(dim=1)  # (B, D)
        p = 0.5 * (square_of_sum - sum_of_square)  # (B, D)
        return p.sum(dim=1, keepdim=True) if self.reduce else p


class _Cross(nn.Module):
    """What both cross networks share: the optional LayerNorm of each layer's kernel
    output and stochastic depth over the layers.

    ``x_{l+1} = x_0 ⊙ N_l(k_l(x_l)) + x_l`` with ``k_l`` the layer's kernel and ``N_l``
    a LayerNorm (``layer_norm``) or the identity. With ``stochastic_depth = p`` each
    row skips each layer's update with probability ``p`` while training (the kept
    updates scaled by ``1/(1 − p)``); evaluation runs every layer.
    """

    def __init__(self, in_dim: int, num_layers: int, layer_norm: bool, stochastic_depth: float):
        super().__init__()
        if not 0 <= stochastic_depth < 1:
            raise ValueError(f"stochastic_depth must be in [0, 1), got {stochastic_depth}")
        self.norms = nn.ModuleList(
            nn.LayerNorm(in_dim) if layer_norm else nn.Identity() for _ in range(num_layers)
        )
        self.stochastic_depth = stochastic_depth

    def kernel(self, l: int, x: torch.Tensor) -> torch.Tensor:  # noqa: E741
        """``W_l x + b_l`` ``(B, K)``."""
        raise NotImplementedError

    def update(self, l: int, x0: torch.Tensor, xl: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:  # noqa: E741
        """Layer ``l`` given its kernel's output ``pre`` ``(B, K)``."""
        cross = x0 * self.norms[l](pre)  # (B, K)
        p = self.stochastic_depth
        if self.training and p > 0:
            keep = torch.rand(len(cross), 1, device=cross.device) >= p  # (B, 1)
            cross = cross * keep / (1 - p)
        return xl + cross

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0, xl = x, x  # (B, K)
        for l in range(len(self.norms)):  # noqa: E741
            xl = self.update(l, x0, xl, self.kernel(l, xl))
        return xl


class CrossNet(_Cross):
    """DCN-v2 cross network, full rank: explicit feature crosses of bounded degree.

    ``x_{l+1} = x_0 ⊙ N_l(W_l x_l + b_l) + x_l`` with ``W_l ∈ R^{K×K}`` and ``N_l`` a
    LayerNorm or the identity; layer ``l`` reaches crosses of degree ``l + 2``.

    Args:
        in_dim (int): K.
        num_layers (int): number of cross layers (0 = identity).
        layer_norm (bool): LayerNorm of each layer's ``W_l x_l + b_l``.
        stochastic_depth (float): the probability a row skips a layer, in training.

    Call:
        x (Tensor): ``(B, K)``.

    Returns:
        Tensor: ``(B, K)``.
    """

    def __init__(
        self, in_dim: int, num_layers: int, layer_norm: bool = False, stochastic_depth: float = 0.0
    ) -> None:
        super().__init__(in_dim, num_layers, layer_norm, stochastic_depth)
        self.layers = nn.ModuleList(nn.Linear(in_dim, in_dim) for _ in range(num_layers))

    def kernel(self, l: int, x: torch.Tensor) -> torch.Tensor:  # noqa: E741
        return self.layers[l](x)


class LowRankCrossNet(_Cross):
    """DCN-v2 cross network with low-rank kernels ``W_l = U_l V_l^T``.

    ``x_{l+1} = x_0 ⊙ N_l(U_l (V_l^T x_l) + b_l) + x_l`` with ``U_l, V_l ∈ R^{K×r}``:
    ``2·K·r`` weights per layer instead of ``K²``.

    Args:
        in_dim (int): K.
        num_layers (int): number of cross layers (0 = identity).
        rank (int): r.
        layer_norm (bool), stochastic_depth (float): as :class:`CrossNet`.

    Call:
        x (Tensor): ``(B, K)``.

    Returns:
        Tensor: ``(B, K)``.
    """

    def __init__(
        self, in_dim: int, num_layers: int, rank: int, layer_norm: bool = False,
        stochastic_depth: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__(in_dim, num_layers, layer_norm, stochastic_depth)
        # down[l].weight is V_l^T (r, K); up[l].weight is U_l (K, r), up[l].bias is b_l.
        self.down = nn.ModuleList(nn.Linear(in_dim, rank, bias=False) for _ in range(num_layers))
        self.up = nn.ModuleList(nn.Linear(rank, in_dim) for _ in range(num_layers))

    def kernel(self, l: int, x: torch.Tensor) -> torch.Tensor:  # noqa: E741
        return self.up[l](self.down[l](x))  # (B, r) -> (B, K)


class GatedFusion(nn.Module):
    """Mixes an id embedding with a feature representation through a learned gate.

    ``g = σ(w · [id; feat] + b)`` (one scalar per row), ``fused = g·id + (1 − g)·feat``.
    A cold user or item carries its column's shared out-of-vocabulary id, whose
    embedding says little; the gate learns to lean on the features then.

    Args:
        dim (int): D, the width of both inputs.

    Call:
        id_emb (Tensor): ``(B, D)``.
        feat (Tensor): ``(B, D)``.

    Returns:
        Tensor: ``(B, D)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * dim, 1)

    def forward(self, id_emb: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([id_emb, feat], dim=1)))  # (B, 1)
        return g * id_emb + (1 - g) * feat  # (B, D)


class SequenceEncoder(nn.Module):
    """Self-attention over a user's recent items (SASRec-style), read at the latest one.

    ``x_j = E[s_j] + P[j]`` for the j-th most recent item (``P`` learned positions), then
    ``n_layers`` pre-norm Transformer encoder blocks whose keys skip padding; the output
    at position 0, the latest item, attends to the whole history. Every item of a
    history is earlier than the example it serves, so no causal mask is needed. A user
    with no history gets the zero vector, as the mean pool gives.

    Args:
        embedding (nn.Embedding): the item-id table (shared with the item tower).
        length (int): H, the longest history.
        n_layers (int): encoder blocks.
        n_heads (int): attention heads (divides D).
        dropout (float): dropout inside the blocks.

    Call:
        slots (Tensor): ``(B, H)`` int64 item slots, most recent first, 0 = padding.

    Returns:
        Tensor: ``(B, D)``.
    """

    def __init__(
        self, embedding: nn.Embedding, length: int, n_layers: int, n_heads: int, dropout: float
    ) -> None:
        super().__init__()
        d = embedding.embedding_dim
        self.embedding = embedding
        self.positions = nn.Parameter(torch.randn(length, d) * 0.02)
        block = nn.TransformerEncoderLayer(
            d, n_heads, dim_feedforward=2 * d, dropout=dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(
            block, n_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False
        )

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        if slots.shape[1] == 0:
            return self.embedding.weight.new_zeros(slots.shape[0], self.embedding.embedding_dim)
        h = slots.shape[1]
        x = self.embedding(slots) + self.positions[:h]  # (B, H, D)
        padding = slots == 0  # (B, H)
        empty = padding.all(dim=1)  # (B,)
        # an all-padding row would attend to nothing (NaN): let it see position 0, then zero it
        padding = padding & ~(empty[:, None] & (torch.arange(h) == 0))
        out = self.blocks(x, src_key_padding_mask=padding)[:, 0]  # (B, D)
        return out.masked_fill(empty[:, None], 0.0)
