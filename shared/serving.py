"""The serving form of a bundle: every table, model and index the gateway answers from.

:meth:`ServingBundle.load` verifies a version directory (sha256 of every file, the
files serving needs, models that fit the feature map and the index) and does all the
per-item work once: item id lookup, the FAISS index, each user's seen items as CSR
arrays, the hot list as item rows. A request then only indexes arrays and runs one
batched forward pass; nothing here loops in Python per candidate.

The scoring path is the offline one: :meth:`FeatureTables.ranker_inputs` builds the
inputs and the ranker's chained probabilities are combined with the manifest's score
weights exactly as :meth:`shared.models.rankers.Ranker.score` does, so the gateway's
scores are the offline model's scores (no train/serve skew).

Legend: B scored (user, item) pairs, T tasks, U user rows, I item rows, D embedding width.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import polars as pl
import torch
from torch import nn

from shared.bundle import Bundle, Files
from shared.errors import BundleError, RecsysError
from shared.feature_map import FeatureMap
from shared.features import FeatureTables
from shared.models.checkpoint import checkpoint_paths, load_model
from shared.models.inputs import RankerInputs
from shared.models.rankers import Ranker, final_score
from shared.models.towers import TwoTower, UserTower
from shared.schema import DatasetSpec

__all__ = ["ScoredBatch", "SeenItems", "ServingBundle", "merge_candidates"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeenItems:
    """Each user's interacted item rows as CSR arrays: ``items[indptr[u]:indptr[u + 1]]``."""

    indptr: np.ndarray  # (U + 1,) int64
    items: np.ndarray  # (nnz,) int64, sorted within each user

    @classmethod
    def build(
        cls, user_rows: np.ndarray, item_rows: np.ndarray, n_users: int, n_items: int
    ) -> SeenItems:
        """From interaction pairs (repeats allowed); ``n_users``/``n_items`` count row 0 too."""
        keys = np.unique(user_rows.astype(np.int64) * n_items + item_rows.astype(np.int64))
        users, items = np.divmod(keys, n_items)
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
        return cls(indptr=indptr, items=items)

    def of(self, user_row: int) -> np.ndarray:
        """Item rows the user interacted with (empty for row 0, the unknown user)."""
        return self.items[self.indptr[user_row] : self.indptr[user_row + 1]]


def merge_candidates(
    primary: np.ndarray, fallback: np.ndarray, exclude: np.ndarray, n: int
) -> np.ndarray:
    """The first ``n`` distinct item rows of ``primary`` then ``fallback``.

    Rows ``<= 0`` (unknown items, FAISS's ``-1`` padding) and rows in ``exclude`` are
    dropped; a repeated row keeps its first place. Fewer than ``n`` come back only when
    both lists together hold fewer usable rows.
    """
    # enough of the fallback for n survivors even if every excluded row and every primary
    # row also sits in it
    pool = np.concatenate([primary, fallback[: n + len(exclude) + len(primary)]])
    pool = pool[pool > 0]
    if len(exclude):
        pool = pool[~np.isin(pool, exclude)]
    _, first = np.unique(pool, return_index=True)
    first.sort()
    return pool[first[:n]]


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of B (user, item) pairs, as numpy arrays."""

    score: np.ndarray  # (B,) float32 final score (see shared.models.rankers.final_score)
    probs: np.ndarray  # (B, T) float32 chained probability (or value) of each task
    features_s: float  # time spent building inputs
    scoring_s: float  # time spent in the forward pass


@dataclass(frozen=True, eq=False)
class ServingBundle:
    """One verified bundle version in memory, ready to answer requests.

    Use :meth:`load`; every field is read-only once built, so a request that holds a
    reference keeps a consistent version while a newer one is swapped in.
    """

    version: str
    root: Path
    manifest: dict[str, Any]
    tables: FeatureTables
    user_tower: UserTower
    ranker: Ranker
    ranker_kind: str
    index: faiss.Index
    seen: SeenItems
    hot: np.ndarray  # (I',) item rows, hottest first: global_hot, then every other item
    score_weights: dict[str, float]
    retrieval_weight: float  # weight of the two-tower logit in the final score
    item_vectors: torch.Tensor | None  # (I, O) two-tower item vectors; None when unused
    tasks: tuple[str, ...]
    item_ids: np.ndarray  # (I,) object: raw id of each item row

    # --- loading -----------------------------------------------------------------
    @classmethod
    def load(cls, artifacts_dir: Path, version: str, ranker: str = "dcn") -> ServingBundle:
        """Verify and load ``artifacts_dir/version``.

        Args:
            artifacts_dir (Path): the folder of bundles (shared with the worker).
            version (str): the version directory to load.
            ranker (str): ``"dcn"`` or ``"deepfm"``.

        Returns:
            ServingBundle: the loaded version.

        Raises:
            BundleError: the bundle is missing, partial, corrupt, foreign, or its parts
                do not fit together; the message names the file and the problem.
        """
        started = time.perf_counter()
        try:
            loaded = cls._load(Path(artifacts_dir), version, ranker)
        except RecsysError as e:
            raise BundleError(str(e)) from None
        except Exception as e:  # polars, FAISS, numpy: a file that is not what it claims
            raise BundleError(
                f"{Path(artifacts_dir) / version}: cannot load bundle: {type(e).__name__}: {e}"
            ) from e
        log.info(
            "loaded bundle %s (%s ranker, %d users, %d items) in %.2f s",
            version, ranker, len(loaded.tables.users) - 1, len(loaded.item_ids) - 1,
            time.perf_counter() - started,
        )  # fmt: skip
        return loaded

    @classmethod
    def _load(cls, artifacts: Path, version: str, ranker_kind: str) -> ServingBundle:
        if not version or "/" in version or version.startswith("."):
            raise BundleError(f"{version!r} is not a bundle version")
        bundle = Bundle.open(artifacts, version)
        ranker_prefix = Files.RANKER.format(kind=ranker_kind)
        required = (
            Files.SPEC, Files.FEATURE_MAP, Files.USERS, Files.ITEMS, Files.INTERACTIONS,
            Files.INDEX, Files.HOT, Files.ITEM_EMBEDDINGS,
            *(p.name for p in checkpoint_paths(bundle.path(Files.TWO_TOWER))),
            *(p.name for p in checkpoint_paths(bundle.path(ranker_prefix))),
        )  # fmt: skip
        manifest = bundle.verify(required=required)
        if manifest.get("version") != version:
            raise BundleError(
                f"{bundle.root}: manifest names version {manifest.get('version')!r}, "
                f"not {version!r} (foreign or copied bundle)"
            )
        serving = manifest.get("serving")
        if not isinstance(serving, dict) or not isinstance(serving.get("score_weights"), dict):
            raise BundleError(f"{bundle.root}: manifest has no serving.score_weights")
        if ranker_kind not in serving.get("rankers", [ranker_kind]):
            raise BundleError(
                f"{bundle.root}: bundle serves rankers {serving['rankers']}, not {ranker_kind!r}"
            )

        spec = DatasetSpec.from_dict(json.loads(bundle.path(Files.SPEC).read_text()))
        fmap = FeatureMap.load(bundle.path(Files.FEATURE_MAP))
        tables = FeatureTables.from_frames(
            pl.read_parquet(bundle.path(Files.USERS)),
            pl.read_parquet(bundle.path(Files.ITEMS)),
            spec,
            fmap,
        )
        n_users, n_items = len(tables.users), len(tables.items)

        towers = load_model(bundle.path(Files.TWO_TOWER))
        user_tower = towers.user_tower if isinstance(towers, TwoTower) else towers
        if not isinstance(user_tower, UserTower):
            raise BundleError(f"{bundle.path(Files.TWO_TOWER)}: not a two-tower checkpoint")
        ranker = load_model(bundle.path(ranker_prefix))
        if not isinstance(ranker, Ranker) or ranker.kind != ranker_kind:
            raise BundleError(f"{bundle.path(ranker_prefix)}: not a {ranker_kind} ranker")
        _check_fits(bundle.root, tables, fmap, user_tower, ranker)

        weights = {str(k): float(v) for k, v in serving["score_weights"].items()}
        tasks = tuple(t.name for t in ranker.config.tasks)
        if unknown := set(weights) - set(tasks):
            raise BundleError(f"{bundle.root}: score weights name unknown tasks {sorted(unknown)}")
        retrieval_weight = float(serving.get("retrieval_weights", {}).get(ranker_kind, 0.0))
        item_vectors = None
        if retrieval_weight > 0:
            path = bundle.path(Files.ITEM_EMBEDDINGS)
            item_vectors = torch.from_numpy(np.load(path)).float()
            if item_vectors.shape != (n_items, user_tower.config.out_dim):
                raise BundleError(
                    f"{path}: shape {tuple(item_vectors.shape)}, "
                    f"expected ({n_items}, {user_tower.config.out_dim})"
                )

        index = faiss.read_index(str(bundle.path(Files.INDEX)))
        if index.ntotal != n_items - 1 or index.d != user_tower.config.out_dim:
            raise BundleError(
                f"{bundle.path(Files.INDEX)}: {index.ntotal} vectors of width {index.d}, "
                f"expected {n_items - 1} of width {user_tower.config.out_dim}"
            )

        pairs = pl.read_parquet(bundle.path(Files.INTERACTIONS), columns=["user_idx", "item_idx"])
        seen = SeenItems.build(
            pairs["user_idx"].to_numpy(), pairs["item_idx"].to_numpy(), n_users, n_items
        )
        hot = pl.read_parquet(bundle.path(Files.HOT), columns=["item_idx"])["item_idx"].to_numpy()
        if len(hot) and (hot.min() < 1 or hot.max() >= n_items):
            raise BundleError(f"{bundle.path(Files.HOT)}: item rows outside 1..{n_items - 1}")
        # the memory hot list: the published global_hot, then every other item, so padding
        # a short list never runs dry before the catalogue does
        rest = np.setdiff1d(np.arange(1, n_items), hot, assume_unique=False)
        hot = np.concatenate([hot.astype(np.int64), rest]).astype(np.int64)

        return cls(
            version=version,
            root=bundle.root,
            manifest=manifest,
            tables=tables,
            user_tower=user_tower.eval(),
            ranker=ranker.eval(),
            ranker_kind=ranker_kind,
            index=index,
            seen=seen,
            hot=hot,
            score_weights=weights,
            retrieval_weight=retrieval_weight,
            item_vectors=item_vectors,
            tasks=tasks,
            item_ids=tables.items.ids,
        )

    # --- lookups -------------------------------------------------------------------
    def user_row(self, uid: str) -> int:
        """The user's table row, 0 when the bundle does not know the user."""
        return self.tables.users.index.get(uid, 0)

    def item_rows(self, raw_ids: Sequence[str]) -> np.ndarray:
        """(n,) item rows of raw ids, 0 for ids the bundle does not know.

        ``map`` over the dict's ``get`` iterates in C: no Python frame per id.
        """
        lookup = map(self.tables.items.index.get, raw_ids, repeat(0))
        return np.fromiter(lookup, dtype=np.int64, count=len(raw_ids))

    # --- retrieval -----------------------------------------------------------------
    def search(self, user_row: int, k: int) -> np.ndarray:
        """Item rows nearest the user's tower vector, best first; never FAISS's -1 padding.

        Args:
            user_row (int): the user's row (0: the unknown user, OOV features).
            k (int): how many neighbours to ask for (capped at the catalogue).

        Returns:
            np.ndarray: ``(≤k,)`` int64 item rows ``≥ 1``.
        """
        k = min(k, self.index.ntotal)
        if k <= 0:
            return np.empty(0, dtype=np.int64)
        with torch.inference_mode():
            vector = self.user_tower(
                self.tables.user_inputs(np.array([user_row]))
            ).numpy()  # (1, D)
        _, found = self.index.search(np.ascontiguousarray(vector, dtype=np.float32), k)  # (1, k)
        found = found[0]
        return found[found >= 0].astype(np.int64) + 1  # FAISS id j ↔ item row j + 1

    # --- scoring -------------------------------------------------------------------
    def ranker_inputs(
        self, user_rows: np.ndarray, item_rows: np.ndarray, hour: np.ndarray, dow: np.ndarray
    ) -> RankerInputs:
        """The ranker's inputs for (user, item, context) rows, all ``(B,)`` int arrays."""
        return self.tables.ranker_inputs(user_rows, item_rows, hour, dow)

    def score(
        self, user_rows: np.ndarray, item_rows: np.ndarray, hour: np.ndarray, dow: np.ndarray
    ) -> ScoredBatch:
        """One forward pass of the ranker over B pairs: the final score and every ``p_t``.

        With a retrieval weight, the user tower runs once per distinct user of the batch
        and the score blends in ``u·v/τ`` (:func:`~shared.models.rankers.final_score`).
        """
        t0 = time.perf_counter()
        inputs = self.ranker_inputs(user_rows, item_rows, hour, dow)
        t1 = time.perf_counter()
        with torch.inference_mode():
            total, probs = self.ranker.score_with_probabilities(inputs, self.score_weights)
            logits = None
            if self.item_vectors is not None:
                users, where = np.unique(user_rows, return_inverse=True)
                u = self.user_tower(self.tables.user_inputs(users))  # (U', O)
                v = self.item_vectors[torch.from_numpy(item_rows)]  # (B, O)
                logits = (u[torch.from_numpy(where)] * v).sum(
                    1
                ) / self.user_tower.config.temperature
            total = final_score(total, logits, self.retrieval_weight)
            stacked = torch.stack([probs[t] for t in self.tasks], dim=1)  # (B, T)
        t2 = time.perf_counter()
        return ScoredBatch(total.numpy(), stacked.numpy(), t1 - t0, t2 - t1)


def _check_fits(
    root: Path, tables: FeatureTables, fmap: FeatureMap, user_tower: nn.Module, ranker: Ranker
) -> None:
    """Models trained on another feature map or table layout would score garbage: refuse."""
    c = ranker.config
    widths = tables.ranker_widths
    got = {"vocab_size": c.vocab_size, "n_cat": c.n_cat, "n_multi": c.n_multi, "n_dense": c.n_dense}
    want = {"vocab_size": fmap.size, **widths}
    if got != want:
        raise BundleError(
            f"{root}: the {ranker.kind} ranker was built for {got}, but the bundle's "
            f"feature tables give {want} (models from another bundle?)"
        )
    if user_tower.config.vocab_size != fmap.size:
        raise BundleError(
            f"{root}: the two-tower model has {user_tower.config.vocab_size} slots, "
            f"the feature map {fmap.size} (models from another bundle?)"
        )
