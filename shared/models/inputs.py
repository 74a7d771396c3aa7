"""The tensors every model reads: one named tuple per model family.

The feature pipeline turns raw rows into these; the models never see a raw id. Every
slot id indexes ONE vocabulary shared by all columns (slot 0 is padding; each column
has its own out-of-vocabulary slot, which is what a cold user or item gets).

Any part may have zero width (no multi-hot fields: ``multi`` is ``(B, 0, 1)``; no
numeric features: ``dense`` is ``(B, 0)``); every model accepts that.

Legend: B batch, F categorical fields, M multi-hot fields, L slots per multi-hot
field, N numeric fields, H history length.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["ItemInputs", "RankerInputs", "UserInputs"]


class RankerInputs(NamedTuple):
    """One (user, item, context) row per example, for the rankers."""

    cat: torch.Tensor  # (B, F) int64 slot ids
    multi: torch.Tensor  # (B, M, L) int64 slot ids, 0 = padding; mean-pooled over non-padding
    dense: torch.Tensor  # (B, N) float32, standardized


class UserInputs(NamedTuple):
    """One user per example, for the user tower."""

    id: torch.Tensor  # (B,) int64 slot of user_id
    cat: torch.Tensor  # (B, Fu) int64
    multi: torch.Tensor  # (B, Mu, L) int64, 0 = padding
    dense: torch.Tensor  # (B, Nu) float32
    history: torch.Tensor  # (B, H) int64 item_id slots of recent items, 0 = padding


class ItemInputs(NamedTuple):
    """One item per example, for the item tower."""

    id: torch.Tensor  # (B,) int64 slot of item_id
    cat: torch.Tensor  # (B, Fi) int64
    multi: torch.Tensor  # (B, Mi, L) int64, 0 = padding
    dense: torch.Tensor  # (B, Ni) float32
