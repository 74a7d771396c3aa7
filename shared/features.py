"""Encoded feature tables in memory: indices in, model inputs out.

Training and serving both build model inputs here, from the same ``users.parquet``,
``items.parquet`` and feature map, so there is no second implementation to drift
(no train/serve skew). Row 0 of each table is the unknown user / item: every slot
is its column's OOV slot, numerics are 0 (the training mean), history is empty.

The context of an impression (the hour and day of week, then the spec's context
features) is a :class:`Context` row: its categorical slots, standardised numerics and
the anchor item's row (0: none), encoded by :meth:`FeatureTables.context_of` at serving
time and read from the ``ctx_*`` columns ETL writes into ``interactions`` for training.
An anchor is read through the item's own fields (same slots, its own field positions),
so the ranker crosses the candidate with the anchor's id, category, tags and numerics.

Legend: B batch, Fu/Fi/Fc categorical fields, Mu/Mi multi-hot fields, L slots per
multi-hot field, Nu/Ni/Nc numeric fields, H history length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import torch

from shared.feature_map import FeatureMap
from shared.models.inputs import ItemInputs, RankerInputs, UserInputs
from shared.schema import CONTEXT_FEATURES, DatasetSpec, FeatureKind, clock_values


def dense_widths(widths: Sequence[int]) -> tuple[int, ...] | None:
    """Dense field widths as model configs record them: None when every field is a number."""
    return tuple(widths) if max(widths, default=1) > 1 else None


class Context(NamedTuple):
    """One impression's context, encoded (hashable: the serving side caches by it)."""

    cat: tuple[int, ...]  # (Fc,) slots: the clock (hour, dow, …), then the categorical context
    dense: tuple[float, ...]  # (Nc,) standardised numeric context
    anchor: int = 0  # the anchor item's row, 0 = none


class ContextBatch(NamedTuple):
    """B impressions' contexts, as arrays."""

    cat: np.ndarray  # (B, Fc) int64
    dense: np.ndarray  # (B, Nc) float32
    anchor: np.ndarray  # (B,) int64 item rows, 0 = none

    def take(self, index: Any) -> ContextBatch:
        return ContextBatch(self.cat[index], self.dense[index], self.anchor[index])

    def repeat(self, n: int) -> ContextBatch:
        return ContextBatch(*(np.repeat(a, n, axis=0) for a in self))

    @classmethod
    def of(cls, context: Context, n: int = 1) -> ContextBatch:
        return cls(
            np.tile(np.asarray(context.cat, dtype=np.int64), (n, 1)),
            np.tile(np.asarray(context.dense, dtype=np.float32), (n, 1)),
            np.full(n, context.anchor, dtype=np.int64),
        )


class ContextError(ValueError):
    """A request's context that cannot be encoded: ``problems`` maps each bad key to why
    (a key the served spec does not have, a numeric value that is not a number)."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        super().__init__("; ".join(f"{k}: {why}" for k, why in self.problems.items()))


@dataclass(frozen=True)
class ContextLayout:
    """The context fields of a spec, in the ranker's order, and their serving defaults."""

    categorical: tuple[str, ...]  # the clock's (hour, dow, …), then the spec's categorical ones
    numeric: tuple[str, ...]
    anchor: str | None
    defaults: Mapping[str, str | None]
    positions: tuple[str, ...] = ()  # the slot features (scored at their default)
    clock: tuple[str, ...] = CONTEXT_FEATURES  # the first categorical ones, taken from ts

    @classmethod
    def of(cls, spec: DatasetSpec) -> ContextLayout:
        ctx = spec.features_of("context")
        return cls(
            categorical=(*spec.clock,
                         *(f.name for f in ctx if f.kind == FeatureKind.CATEGORICAL)),
            numeric=tuple(f.name for f in ctx if f.kind == FeatureKind.NUMERIC),
            anchor=spec.anchor,
            defaults={f.name: f.default for f in ctx},
            positions=tuple(f.name for f in ctx if f.position),
            clock=spec.clock,
        )  # fmt: skip

    @property
    def names(self) -> tuple[str, ...]:
        """Every context feature, in the ranker's order: categorical, numeric, the anchor."""
        return (*self.categorical, *self.numeric, *((self.anchor,) if self.anchor else ()))

    @property
    def given(self) -> tuple[str, ...]:
        """The context a request may give (the hour and day come from the clock)."""
        return self.names[len(self.clock) :]

    @property
    def columns(self) -> list[str]:
        """The encoded context columns of ``interactions``, as :meth:`FeatureTables.context_batch`
        reads them."""
        return [self.column(n) for n in self.names]

    @staticmethod
    def column(name: str) -> str:
        """The encoded column of a context feature in ``interactions``."""
        return f"ctx_{name}"


__all__ = [
    "Context",
    "ContextBatch",
    "ContextError",
    "ContextLayout",
    "EntityTable",
    "FeatureTables",
    "FieldLayout",
    "dense_widths",
]


@dataclass
class EntityTable:
    """One side (users or items): raw ids and encoded features, row 0 = unknown."""

    ids: np.ndarray  # (R,) object: raw ids, ids[0] = "" (unknown)
    index: dict[str, int]  # raw id → row
    id_slot: np.ndarray  # (R,) int64
    cat: np.ndarray  # (R, F) int64
    multi: np.ndarray  # (R, M, L) int64
    dense: np.ndarray  # (R, ΣW) float32: standardised numerics, then pretrained vectors
    cat_names: list[str]
    multi_names: list[str]
    dense_names: list[str]  # the dense fields: numerics, then vectors
    dense_widths: list[int]  # each dense field's columns: 1 for a number, a vector's length
    # the dense columns learned from interactions (aggregates, ALS factors) and their
    # values for an entity with none (FeatureMap.unseen): how a new one looks
    aggregates: np.ndarray  # (K,) int64 columns of ``dense``
    unseen: np.ndarray  # (K,) float32

    @property
    def n_dense(self) -> int:
        """Dense fields (numbers and vectors)."""
        return len(self.dense_widths)

    @classmethod
    def from_frame(
        cls, frame: pl.DataFrame, owner: str, spec: DatasetSpec, fmap: FeatureMap
    ) -> EntityTable:
        key = f"{owner}_id"
        frame = frame.sort(f"{owner}_idx")
        n = frame.height + 1
        cat_names = [f.name for f in spec.features_of(owner, FeatureKind.CATEGORICAL)]  # type: ignore[arg-type]
        multi_names = [f.name for f in spec.features_of(owner, FeatureKind.MULTI_HOT)]  # type: ignore[arg-type]
        numbers = sorted(c.removeprefix("num_") for c in frame.columns if c.startswith("num_"))
        vectors = [f.name for f in spec.features_of(owner, FeatureKind.VECTOR)]  # type: ignore[arg-type]
        widths = [1] * len(numbers) + [
            len(frame[f"vec_{v}"][0]) if frame.height else 1 for v in vectors
        ]
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
        dense = np.zeros((n, sum(widths)), dtype=np.float32)
        for j, c in enumerate(numbers):
            dense[1:, j] = frame[f"num_{c}"].to_numpy()
        at = len(numbers)
        for v, w in zip(vectors, widths[len(numbers) :], strict=True):
            if frame.height:
                dense[1:, at : at + w] = np.asarray(frame[f"vec_{v}"].to_list(), dtype=np.float32)
            at += w
        ids = np.empty(n, dtype=object)
        ids[0] = ""
        ids[1:] = frame[key].to_numpy()
        index = {raw: i for i, raw in enumerate(ids[1:].tolist(), start=1)}
        aggregates: list[int] = []
        unseen: list[float] = []
        at = 0
        for name, w in zip([*numbers, *(f"{owner}_{v}" for v in vectors)], widths, strict=True):
            if name in fmap.unseen:
                aggregates += range(at, at + w)
                unseen += np.atleast_1d(fmap.unseen[name]).tolist()
            at += w
        return cls(ids, index, id_slot, cat, multi, dense, cat_names, multi_names,
                   [*numbers, *vectors], widths, np.array(aggregates, dtype=np.int64),
                   np.array(unseen, dtype=np.float32))  # fmt: skip

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
    context: np.ndarray  # (Fc',) the context's, the anchor item's fields included
    history: int  # the user's recent items (a user field, masked where it holds the item)
    n_fields: int  # F


@dataclass
class FeatureTables:
    """Both sides plus the context layout, and the builders of every model input."""

    users: EntityTable
    items: EntityTable
    history: np.ndarray  # (U, H) int64 item_id slots, most recent first: the served history
    context: ContextLayout
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
            context=ContextLayout.of(spec),
            feature_map=fmap,
        )

    # --- contexts ------------------------------------------------------------------
    def context_of(self, given: Mapping[str, Any], hour: int, dow: int) -> Context:
        """One request's context: ``given`` raw values by name (a missing one takes its
        feature's default; an unseen value is out-of-vocabulary, never an error).

        Raises:
            ContextError: ``given`` names a key that is not a context feature, or a
                numeric context value that is not a finite number.
        """
        c = self.context
        names = c.given
        problems = {}
        if unknown := [k for k in given if k not in names]:  # the known list only then
            known = ", ".join(names) or "none"
            problems = {k: f"not a context feature of the served version (known: {known})"
                        for k in unknown}  # fmt: skip
        fmap = self.feature_map
        value = clock_values(hour, dow)
        value |= {k: given.get(k, c.defaults.get(k)) for k in names}
        dense = []
        for name in c.numeric:
            mean, std = fmap.numeric[name]
            raw = value[name]
            try:
                number = mean if raw is None else float(raw)
            except (TypeError, ValueError):
                number = float("nan")
            if not np.isfinite(number):
                problems[name] = f"{raw!r} is not a finite number"
            dense.append(float(np.float32((number - mean) / std)))
        if problems:
            raise ContextError(problems)
        given_anchor = value[c.anchor] if c.anchor else None
        anchor = self.items.index.get(str(given_anchor), 0) if given_anchor is not None else 0
        return Context(tuple(fmap.slot(n, value[n]) for n in c.categorical), tuple(dense), anchor)

    def context_batch(self, frame: pl.DataFrame) -> ContextBatch:
        """The contexts of ``frame``'s rows, from its encoded ``ctx_*`` columns (ETL)."""
        c, col = self.context, ContextLayout.column
        n = frame.height
        cat = np.empty((n, len(c.categorical)), dtype=np.int64)
        for j, name in enumerate(c.categorical):
            cat[:, j] = frame[col(name)].to_numpy()
        dense = np.empty((n, len(c.numeric)), dtype=np.float32)
        for j, name in enumerate(c.numeric):
            dense[:, j] = frame[col(name)].to_numpy()
        anchor = frame[col(c.anchor)].to_numpy() if c.anchor else np.zeros(n, dtype=np.int64)
        return ContextBatch(cat, dense, anchor.astype(np.int64, copy=False))

    def at_default_position(self, context: ContextBatch) -> ContextBatch:
        """``context`` with every position feature at its default slot."""
        c = self.context
        if not c.positions:
            return context
        cat = context.cat.copy()
        for name in c.positions:
            cat[:, c.categorical.index(name)] = self.feature_map.slot(name, c.defaults[name])
        return ContextBatch(cat, context.dense, context.anchor)

    def default_context(self, n: int) -> ContextBatch:
        """``n`` contexts at the serving defaults, at hour 0 of a Monday."""
        return ContextBatch.of(self.context_of({}, 0, 0), n)

    # --- shapes the model configs need ---------------------------------------------
    @property
    def _anchor(self) -> int:
        return 1 if self.context.anchor else 0

    @property
    def ranker_widths(self) -> dict[str, Any]:
        """Field counts of :meth:`ranker_inputs`: ids, user and item features, history,
        context (the anchor as a second set of item fields)."""
        u, i, c, a = self.users, self.items, self.context, self._anchor
        widths = [*u.dense_widths, *i.dense_widths, *[1] * len(c.numeric),
                  *(i.dense_widths if a else [])]  # fmt: skip
        return {
            "n_cat": 2 + u.cat.shape[1] + i.cat.shape[1] + len(c.categorical)
            + a * (1 + i.cat.shape[1]),
            "n_multi": u.multi.shape[1] + (1 + a) * i.multi.shape[1] + 1,  # + recent items
            "n_dense": len(widths),
            "dense_widths": dense_widths(widths),
        }  # fmt: skip

    @property
    def ranker_layout(self) -> FieldLayout:
        """Where each side's fields sit among the ranker's ``F`` embedded fields.

        :meth:`ranker_inputs` orders categorical fields ``[user id, user cat, item id,
        item cat, context cat (hour, dow, …), anchor id, anchor cat]``, multi-hot
        ``[user multi, item multi, anchor multi, history]`` and numeric ``[user dense,
        item dense, context dense, anchor dense]`` (no anchor fields when the spec has no
        anchor); the embedded fields are categorical, then multi-hot, then numeric.
        """
        u, i, a = self.users, self.items, self._anchor
        fuc, fic, nc = u.cat.shape[1], i.cat.shape[1], len(self.context.categorical)
        mu, mi = u.multi.shape[1], i.multi.shape[1]
        nu, ni, ncd = u.n_dense, i.n_dense, len(self.context.numeric)
        widths = self.ranker_widths
        n_cat, n_multi = widths["n_cat"], widths["n_multi"]
        at = np.arange
        item_cat = 1 + fuc + at(1 + fic)
        ctx_cat = 2 + fuc + fic + at(nc + a * (1 + fic))
        item_dense = n_cat + n_multi + nu + at(ni)
        ctx_dense = n_cat + n_multi + nu + ni + at(ncd + a * ni)
        return FieldLayout(
            user=np.concatenate([at(1 + fuc), n_cat + at(mu), n_cat + n_multi + at(nu)]),
            item=np.concatenate([item_cat, n_cat + mu + at(mi), item_dense]),
            context=np.concatenate([ctx_cat, n_cat + mu + mi + at(a * mi), ctx_dense]),
            history=n_cat + n_multi - 1,
            n_fields=n_cat + n_multi + widths["n_dense"],
        )

    # --- model inputs ----------------------------------------------------------------
    def ranker_inputs(
        self,
        user_rows: np.ndarray,
        item_rows: np.ndarray,
        context: ContextBatch,
        history: np.ndarray | None = None,
    ) -> RankerInputs:
        """Rows of (user, item, context) → ranker tensors; rows are (B,) int arrays.

        ``history`` (B, H) replaces the users' latest items (training uses each
        example's own past; serving the latest, as stored).
        """
        u, i = self.users, self.items
        cats = [u.id_slot[user_rows, None], u.cat[user_rows], i.id_slot[item_rows, None],
                i.cat[item_rows], context.cat]  # fmt: skip
        multis = [u.multi[user_rows], i.multi[item_rows]]
        denses = [u.dense[user_rows], i.dense[item_rows], context.dense]
        if self._anchor:
            anchor = context.anchor
            cats += [i.id_slot[anchor, None], i.cat[anchor]]
            multis.append(i.multi[anchor])
            denses.append(i.dense[anchor])
        cat = np.concatenate(cats, axis=1)  # (B, F)
        # the user's recent items as one more multi-hot field; the scored item itself is
        # masked out so training positives cannot read their own label from it
        history = self.history[user_rows] if history is None else history  # (B, H)
        history = np.where(history == i.id_slot[item_rows, None], 0, history)
        multi = _concat_multi(*multis, history[:, None, :])  # (B, M, L)
        dense = np.concatenate(denses, axis=1).astype(np.float32, copy=False)  # (B, N)
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

    def item_inputs(self, item_rows: np.ndarray, new: np.ndarray | None = None) -> ItemInputs:
        """``new`` (B,) bool marks items to show as never interacted with (their id out
        of vocabulary, their aggregates at the unseen values), as a new item is."""
        i = self.items
        ids, dense = i.id_slot[item_rows], i.dense[item_rows]
        if new is not None and new.any():
            ids = np.where(new, self.feature_map.oov("item_id"), ids)
            dense = dense.copy()
            dense[np.ix_(new, i.aggregates)] = i.unseen
        return ItemInputs(
            torch.from_numpy(ids),
            torch.from_numpy(i.cat[item_rows]),
            torch.from_numpy(i.multi[item_rows]),
            torch.from_numpy(dense),
        )


def _concat_multi(*parts: np.ndarray) -> np.ndarray:
    """Concatenate (B, M_k, L_k) blocks along fields, right-padding each to the widest L."""
    width = max(p.shape[2] for p in parts)
    padded = [
        np.pad(p, ((0, 0), (0, 0), (0, width - p.shape[2]))) if p.shape[2] != width else p
        for p in parts
    ]
    return np.concatenate(padded, axis=1)
