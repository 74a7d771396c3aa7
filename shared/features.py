"""Encoded feature tables in memory: indices in, model inputs out.

Training and serving both build model inputs here, from the same ``users.parquet``,
``items.parquet`` and feature map, so there is no second implementation to drift
(no train/serve skew). Row 0 of each table is the unknown user / item: every slot
is its column's OOV slot, numerics are 0 (the training mean), history is empty.

Legend: B batch, Fu/Fi categorical fields, Mu/Mi multi-hot fields, L slots per
multi-hot field, Nu/Ni numeric fields, H history length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from shared.feature_map import FeatureMap
from shared.models.inputs import ItemInputs, RankerInputs, UserInputs
from shared.schema import CONTEXT_FEATURES, DatasetSpec, FeatureKind

__all__ = ["EntityTable", "FeatureTables", "FieldLayout"]


@dataclass
class EntityTable:
    """One side (users or items): raw ids and encoded features, row 0 = unknown."""

    ids: np.ndarray  # (R,) object: raw ids, ids[0] = "" (unknown)
    index: dict[str, int]  # raw id → row
    id_slot: np.ndarray  # (R,) int64
    cat: np.ndarray  # (R, F) int64
    multi: np.ndarray  # (R, M, L) int64
    dense: np.ndarray  # (R, N) float32
    cat_names: list[str]
    multi_names: list[str]
    dense_names: list[str]

    @classmethod
    def from_frame(
        cls, frame: pl.DataFrame, owner: str, spec: DatasetSpec, fmap: FeatureMap
    ) -> EntityTable:
        key = f"{owner}_id"
        frame = frame.sort(f"{owner}_idx")
        n = frame.height + 1
        cat_names = [f.name for f in spec.features_of(owner, FeatureKind.CATEGORICAL)]  # type: ignore[arg-type]
        multi_names = [f.name for f in spec.features_of(owner, FeatureKind.MULTI_HOT)]  # type: ignore[arg-type]
        dense_names = sorted(c.removeprefix("num_") for c in frame.columns if c.startswith("num_"))
        width = (
            max((len(frame[f"slot_{m}"][0]) for m in multi_names), default=1) if frame.height else 1
        )

        id_slot = np.empty(n, dtype=np.int64)
        id_slot[0] = fmap.oov(key)
        id_slot[1:] = frame[f"slot_{key}"].to_numpy()
        cat = np.empty((n, len(cat_names)), dtype=np.int64)
        for j, c in enumerate(cat_names):
            cat[0, j] = fmap.oov(c)
            cat[1:, j] = frame[f"slot_{c}"].to_numpy()
        multi = np.zeros((n, len(multi_names), width), dtype=np.int64)
        for j, c in enumerate(multi_names):
            multi[1:, j] = np.asarray(frame[f"slot_{c}"].to_list(), dtype=np.int64).reshape(
                -1, width
            )
        dense = np.zeros((n, len(dense_names)), dtype=np.float32)
        for j, c in enumerate(dense_names):
            dense[1:, j] = frame[f"num_{c}"].to_numpy()
        ids = np.empty(n, dtype=object)
        ids[0] = ""
        ids[1:] = frame[key].to_numpy()
        index = {raw: i for i, raw in enumerate(ids[1:].tolist(), start=1)}
        return cls(ids, index, id_slot, cat, multi, dense, cat_names, multi_names, dense_names)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, raw_ids: Sequence[str]) -> np.ndarray:
        """Rows of raw ids; unknown ids get row 0."""
        get = self.index.get
        return np.fromiter((get(r, 0) for r in raw_ids), dtype=np.int64, count=len(raw_ids))


@dataclass(frozen=True)
class FieldLayout:
    """Positions of each side's fields on the ranker's field axis (see ``ranker_layout``)."""

    user: np.ndarray  # (Fu',) the user's id, categorical, multi-hot and numeric fields
    item: np.ndarray  # (Fi',) the item's
    context: np.ndarray  # (Fc,) hour, day of week
    history: int  # the user's recent items (a user field, masked where it holds the item)
    n_fields: int  # F


@dataclass
class FeatureTables:
    """Both sides plus the context slots, and the builders of every model input."""

    users: EntityTable
    items: EntityTable
    history: np.ndarray  # (U, H) int64 item_id slots, most recent first: the served history
    hour_slots: np.ndarray  # (24,) int64
    dow_slots: np.ndarray  # (7,) int64
    feature_map: FeatureMap

    @classmethod
    def from_frames(
        cls, users: pl.DataFrame, items: pl.DataFrame, spec: DatasetSpec, fmap: FeatureMap
    ) -> FeatureTables:
        u = EntityTable.from_frame(users, "user", spec, fmap)
        history_len = len(users["history"][0]) if users.height else 1
        history = np.zeros((len(u), history_len), dtype=np.int64)
        if users.height:
            history[1:] = np.asarray(users.sort("user_idx")["history"].to_list(), dtype=np.int64)
        return cls(
            users=u,
            items=EntityTable.from_frame(items, "item", spec, fmap),
            history=history,
            hour_slots=np.array([fmap.slot("hour", str(h)) for h in range(24)], dtype=np.int64),
            dow_slots=np.array([fmap.slot("dow", str(d)) for d in range(7)], dtype=np.int64),
            feature_map=fmap,
        )

    # --- shapes the model configs need ---------------------------------------------
    @property
    def ranker_widths(self) -> dict[str, int]:
        """Field counts of :meth:`ranker_inputs`: ids, user and item features, history, context."""
        u, i = self.users, self.items
        return {
            "n_cat": 2 + u.cat.shape[1] + i.cat.shape[1] + len(CONTEXT_FEATURES),
            "n_multi": u.multi.shape[1] + i.multi.shape[1] + 1,  # + the user's recent items
            "n_dense": u.dense.shape[1] + i.dense.shape[1],
        }

    @property
    def ranker_layout(self) -> FieldLayout:
        """Where each side's fields sit among the ranker's ``F`` embedded fields.

        :meth:`ranker_inputs` orders categorical fields ``[user id, user cat, item id,
        item cat, hour, dow]``, multi-hot ``[user multi, item multi, history]`` and
        numeric ``[user dense, item dense]``; the embedded fields are categorical, then
        multi-hot, then numeric.
        """
        u, i = self.users, self.items
        fuc, fic, nc = u.cat.shape[1], i.cat.shape[1], len(CONTEXT_FEATURES)
        mu, mi = u.multi.shape[1], i.multi.shape[1]
        nu, ni = u.dense.shape[1], i.dense.shape[1]
        n_cat, n_multi = 2 + fuc + fic + nc, mu + mi + 1
        at = np.arange
        return FieldLayout(
            user=np.concatenate([at(1 + fuc), n_cat + at(mu), n_cat + n_multi + at(nu)]),
            item=np.concatenate(
                [1 + fuc + at(1 + fic), n_cat + mu + at(mi), n_cat + n_multi + nu + at(ni)]
            ),
            context=n_cat - nc + at(nc),
            history=n_cat + n_multi - 1,
            n_fields=n_cat + n_multi + nu + ni,
        )

    # --- model inputs ----------------------------------------------------------------
    def ranker_inputs(
        self,
        user_rows: np.ndarray,
        item_rows: np.ndarray,
        hour: np.ndarray,
        dow: np.ndarray,
        history: np.ndarray | None = None,
    ) -> RankerInputs:
        """Rows of (user, item, context) → ranker tensors; all arguments are (B,) int arrays.

        ``history`` (B, H) replaces the users' latest items (training uses each
        example's own past; serving the latest, as stored).
        """
        u, i = self.users, self.items
        cat = np.concatenate(
            [
                u.id_slot[user_rows, None],
                u.cat[user_rows],
                i.id_slot[item_rows, None],
                i.cat[item_rows],
                self.hour_slots[hour, None],
                self.dow_slots[dow, None],
            ],
            axis=1,
        )  # (B, F)
        # the user's recent items as one more multi-hot field; the scored item itself is
        # masked out so training positives cannot read their own label from it
        history = self.history[user_rows] if history is None else history  # (B, H)
        history = np.where(history == i.id_slot[item_rows, None], 0, history)
        multi = _concat_multi(
            u.multi[user_rows], i.multi[item_rows], history[:, None, :]
        )  # (B, M, L)
        dense = np.concatenate([u.dense[user_rows], i.dense[item_rows]], axis=1)  # (B, N)
        return RankerInputs(torch.from_numpy(cat), torch.from_numpy(multi), torch.from_numpy(dense))

    def user_inputs(self, user_rows: np.ndarray, history: np.ndarray | None = None) -> UserInputs:
        u = self.users
        hist = self.history[user_rows] if history is None else history
        return UserInputs(
            torch.from_numpy(u.id_slot[user_rows]),
            torch.from_numpy(u.cat[user_rows]),
            torch.from_numpy(u.multi[user_rows]),
            torch.from_numpy(u.dense[user_rows]),
            torch.from_numpy(np.ascontiguousarray(hist)),
        )

    def item_inputs(self, item_rows: np.ndarray) -> ItemInputs:
        i = self.items
        return ItemInputs(
            torch.from_numpy(i.id_slot[item_rows]),
            torch.from_numpy(i.cat[item_rows]),
            torch.from_numpy(i.multi[item_rows]),
            torch.from_numpy(i.dense[item_rows]),
        )


def _concat_multi(*parts: np.ndarray) -> np.ndarray:
    """Concatenate (B, M_k, L_k) blocks along fields, right-padding each to the widest L."""
    width = max(p.shape[2] for p in parts)
    padded = [
        np.pad(p, ((0, 0), (0, 0), (0, width - p.shape[2]))) if p.shape[2] != width else p
        for p in parts
    ]
    return np.concatenate(padded, axis=1)
