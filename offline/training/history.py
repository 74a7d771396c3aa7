"""Causal histories: for each training example, the items its user chose before it.

Serving sees a user's latest items; a training example from months ago would see the
future if it were given the same list. Training therefore rebuilds, per example, the
last ``length`` positives strictly before its timestamp — by binary search over one
sorted key array, no loop per example.

:meth:`CausalHistory.around` gives instead the items nearest in time on both sides
(cloze-style context, as in BERT4Rec): a training-only augmentation that shows the
model each item beside the ones chosen with it, in both orders.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from shared.config import StrictConfig

__all__ = ["CausalHistory", "HistoryConfig"]

_SPAN = np.int64(1) << 34  # > any unix timestamp in seconds until the year 2514


class HistoryConfig(StrictConfig):
    """What a model's training examples see as their user's history (both model families)."""

    history: Literal["causal", "latest"] = Field(
        "causal", description="training history: items before each example, or the latest ones"
    )
    history_decay: float = Field(
        0.8, gt=0, le=1, description="pooling weight ratio of each older history item"
    )
    two_sided: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of causal examples whose history is the items nearest in time "
        "on both sides (cloze-style augmentation)",
    )


class CausalHistory:
    """Look-ups of each (user, time)'s previous positives.

    Args:
        users: (P,) user rows of the training positives.
        ts: (P,) their timestamps.
        slots: (P,) the item_id slot of each positive.
        length: H, the history length.
    """

    def __init__(self, users: np.ndarray, ts: np.ndarray, slots: np.ndarray, length: int) -> None:
        order = np.lexsort((ts, users))
        self.keys = users[order].astype(np.int64) * _SPAN + ts[order].astype(np.int64)
        self.slots = slots[order]
        self.length = length

    def __call__(self, users: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """(B, H) item slots, most recent first, 0 where the user had fewer."""
        base = users.astype(np.int64) * _SPAN
        end = np.searchsorted(self.keys, base + ts, side="left")  # strictly before ts
        start = np.searchsorted(self.keys, base, side="left")
        idx = end[:, None] - 1 - np.arange(self.length)[None, :]  # (B, H)
        return np.where(idx >= start[:, None], self.slots[np.maximum(idx, 0)], 0)

    def latest(self, users: np.ndarray) -> np.ndarray:
        """(B, H) each user's last ``length`` items of all held, most recent first."""
        return self(users, np.full(len(users), _SPAN - 1))

    def sample(
        self, users: np.ndarray, ts: np.ndarray, two_sided: float, rng: np.random.Generator
    ) -> np.ndarray:
        """Training histories: :meth:`__call__`, with a ``two_sided`` share of the rows
        replaced by :meth:`around`."""
        history = self(users, ts)
        pick = rng.random(len(users)) < two_sided
        history[pick] = self.around(users[pick], ts[pick])
        return history

    def around(self, users: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """(B, H) item slots nearest in time, alternating before / after, 0-padded at the end.

        Up to ⌈H/2⌉ items before ``ts`` and ⌊H/2⌋ after it; items sharing ``ts`` (the
        example's own item among them) are left out.
        """
        base = users.astype(np.int64) * _SPAN
        before = np.searchsorted(self.keys, base + ts, side="left") - 1
        after = np.searchsorted(self.keys, base + ts, side="right")
        start = np.searchsorted(self.keys, base, side="left")
        stop = np.searchsorted(self.keys, base + _SPAN, side="left")
        step = np.arange(self.length) // 2
        idx = np.where(  # (B, H): before, after, before − 1, after + 1, …
            np.arange(self.length) % 2 == 0, before[:, None] - step, after[:, None] + step
        )
        ok = (idx >= start[:, None]) & (idx < stop[:, None])
        slots = np.where(ok, self.slots[np.clip(idx, 0, len(self.slots) - 1)], 0)
        return np.take_along_axis(slots, np.argsort(slots == 0, axis=1, kind="stable"), axis=1)
