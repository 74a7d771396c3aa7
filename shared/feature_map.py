"""The feature map: the single truth of vocabularies, ``"col=value" → slot id``.

One id space for every categorical and multi-hot column, so one embedding table
serves them all::

    slot 0                      padding (multi-hot lists, empty history)
    offset(col)                 col=<OOV>: any value not seen when the map was fitted
    offset(col) + 1 + j         col=vocab(col)[j]

A hashed column (the hashing trick, for high-cardinality values) keeps no vocabulary:
``col=value`` lands on ``offset(col) + 1 + crc32(value) mod buckets(col)``, so any value,
seen or not, shares its bucket with others instead of the OOV slot.

Numeric columns keep the mean and standard deviation they are standardised with.
Saved beside the models; the gateway encodes with the very same map, so a value never
seen in training lands on its column's OOV slot instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from shared.errors import BundleError

__all__ = ["PAD", "FeatureMap"]

PAD = 0


@dataclass
class FeatureMap:
    """Vocabularies of categorical columns and statistics of numeric ones."""

    vocab: dict[str, list[str]] = field(default_factory=dict)
    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)
    hashed: dict[str, int] = field(default_factory=dict)  # column → buckets
    # the standardised value of each interaction aggregate (``item_n_interactions``…) and
    # interaction-learned vector (``item_als``) for an entity with no training
    # interactions: what a new item shows its tower
    unseen: dict[str, float | list[float]] = field(default_factory=dict)
    _offsets: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _lookup: dict[str, dict[str, int]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        offset = 1
        for col in self.columns():
            self._offsets[col] = offset
            offset += 1 + self.width(col)
        self._size = offset

    # --- fitting ---------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        categorical: dict[str, pl.Series],
        numeric: dict[str, pl.Series] | None = None,
        min_count: int = 1,
        max_size: int | None = None,
        uncapped: tuple[str, ...] = ("user_id", "item_id"),
        hashed: dict[str, int] | None = None,
    ) -> FeatureMap:
        """Build vocabularies from training values (lists are flattened).

        Values seen fewer than ``min_count`` times, and past the ``max_size`` most
        frequent of a column (the ``uncapped`` id columns excepted), map to the OOV slot,
        which therefore is trained too. Vocabularies are sorted by descending count, then
        value, so the map is deterministic. The ``hashed`` columns get buckets instead.
        """
        hashed = hashed or {}
        vocab: dict[str, list[str]] = {}
        for col, values in categorical.items():
            if col in hashed:
                continue
            if isinstance(values.dtype, pl.List):
                values = values.explode(empty_as_null=False, keep_nulls=False)
            counts = values.drop_nulls().cast(pl.String).value_counts(name="n")
            counts = counts.filter(pl.col("n") >= min_count).sort(
                ["n", values.name], descending=[True, False]
            )
            if max_size is not None and col not in uncapped:
                counts = counts.head(max_size)  # the rarest values share the OOV slot
            vocab[col] = counts[values.name].to_list()
        stats = {}
        for col, values in (numeric or {}).items():
            v = values.cast(pl.Float64).drop_nulls()
            mean = float(v.mean()) if len(v) else 0.0
            std = float(v.std()) if len(v) > 1 else 1.0
            stats[col] = (mean, std if std and std > 1e-12 else 1.0)
        buckets = {c: n for c, n in hashed.items() if c in categorical}
        return cls(vocab=vocab, numeric=stats, hashed=buckets)

    # --- lookups ---------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of slots, padding and OOV slots included (the embedding table's rows)."""
        return self._size

    def oov(self, col: str) -> int:
        return self._offsets[col]

    def width(self, col: str) -> int:
        """The column's value slots (its OOV slot aside): vocabulary or buckets."""
        return self.hashed[col] if col in self.hashed else len(self.vocab[col])

    def value(self, col: str, slot: int) -> str:
        """What a slot of ``col`` stands for: its value, ``<OOV>``, or ``#bucket``."""
        j = int(slot) - self._offsets[col] - 1
        if j < 0:
            return "<OOV>"
        return f"#{j}" if col in self.hashed else self.vocab[col][j]

    def _bucket(self, col: str, value: str) -> int:
        return self._offsets[col] + 1 + zlib.crc32(value.encode()) % self.hashed[col]

    def slot(self, col: str, value: Any) -> int:
        """One value's slot (for a single context value at serving time)."""
        if col in self.hashed:
            return self.oov(col) if value is None else self._bucket(col, str(value))
        if col not in self._lookup:
            self._lookup[col] = {
                v: self._offsets[col] + 1 + j for j, v in enumerate(self.vocab[col])
            }
        return (
            self._lookup[col].get(str(value), self._offsets[col])
            if value is not None
            else self.oov(col)
        )

    def encode(self, col: str, values: pl.Series) -> np.ndarray:
        """Vectorised slots of a column of scalar values, shape (N,) int64."""
        base = self._offsets[col]
        frame = pl.DataFrame({"v": values.cast(pl.String)})
        if col in self.hashed:
            seen = frame["v"].drop_nulls().unique().to_list()
            known, slots = seen, np.array([self._bucket(col, v) for v in seen], dtype=np.int64)
        else:
            known = self.vocab[col]
            slots = np.arange(base + 1, base + 1 + len(known), dtype=np.int64)
        mapping = pl.DataFrame(
            {"v": known, "slot": slots}, schema={"v": pl.String, "slot": pl.Int64}
        )
        slots = frame.join(mapping, on="v", how="left", maintain_order="left")["slot"]
        return slots.fill_null(base).to_numpy().astype(np.int64, copy=False)

    def encode_lists(self, col: str, values: pl.Series, max_len: int) -> np.ndarray:
        """Slots of a column of lists, truncated and right-padded: shape (N, max_len) int64."""
        heads = values.list.drop_nulls().list.head(max_len)
        lengths = heads.list.len().fill_null(0).to_numpy().astype(np.int64)
        flat = heads.explode(empty_as_null=False, keep_nulls=False)  # exactly sum(lengths) values
        out = np.zeros((len(values), max_len), dtype=np.int64)
        rows = np.repeat(np.arange(len(values)), lengths)
        cols = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[rows, cols] = self.encode(col, flat)
        return out

    def standardize(self, col: str, values: pl.Series) -> np.ndarray:
        mean, std = self.numeric[col]
        return ((values.cast(pl.Float64).fill_null(mean).to_numpy() - mean) / std).astype(
            np.float32
        )

    # --- persistence ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {"vocab": self.vocab, "numeric": {k: list(v) for k, v in self.numeric.items()}}
        # older maps have neither (their fingerprints stay)
        return out | {k: v for k, v in (("hashed", self.hashed), ("unseen", self.unseen)) if v}

    @property
    def fingerprint(self) -> str:
        """A short hash of the map's content: models trained on a map record it."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({**self.to_dict(), "fingerprint": self.fingerprint}))

    @classmethod
    def load(cls, path: Path) -> FeatureMap:
        try:
            data = json.loads(Path(path).read_text())
            fmap = cls(
                vocab=data["vocab"],
                numeric={k: tuple(v) for k, v in data["numeric"].items()},
                hashed=data.get("hashed", {}),
                unseen=data.get("unseen", {}),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BundleError(f"{path}: not a readable feature map ({e})") from None
        if data.get("fingerprint") not in (None, fmap.fingerprint):
            raise BundleError(f"{path}: feature map content does not match its fingerprint")
        return fmap

    def columns(self) -> Iterable[str]:
        return [*self.vocab, *self.hashed]
