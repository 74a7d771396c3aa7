"""The serving form of a bundle: every table, model and index the gateway answers from.

:meth:`ServingBundle.load` verifies a version directory (sha256 of every file, the
files serving needs, models that fit the feature map and the index) and does all the
per-item and per-user work once: item id lookup, the FAISS index, each user's seen
items, the hot list as item rows, the ranker's per-side tables and the two-tower
vectors (memory-mapped from the bundle, so every worker process shares one copy).
A request then only gathers rows and runs the ranker's small head
(:class:`~shared.models.scoring.ServingHead`): in onnxruntime from the worker's ONNX
export, or in torch when the bundle has none or ``RECSYS_SCORER=torch``.

The scoring path is the offline one split in two (see :mod:`shared.models.scoring`),
and the final score is :func:`~shared.models.rankers.final_score`, so the gateway's
scores are the offline model's scores (no train/serve skew; tested within 1e-5).

Legend: B scored (user, item) pairs, T tasks, U user rows, I item rows, O vector width.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import polars as pl
import torch
from torch import nn

from shared.bundle import Bundle, Files
from shared.errors import BundleError, RecsysError
from shared.feature_map import FeatureMap
from shared.features import Context, FeatureTables
from shared.models.checkpoint import checkpoint_paths, load_model
from shared.models.rankers import Ranker
from shared.models.scoring import (
    ServingHead,
    SplitTables,
    build_split,
    split_tables,
)
from shared.models.towers import TwoTower, UserTower
from shared.probes import Probe, mismatch, probe_context, read_probes
from shared.recall import SeenItems, merge, nearest
from shared.schema import DatasetSpec

__all__ = ["ModelRuntime", "ScoredBatch", "ServingBundle"]

log = logging.getLogger(__name__)

ModelRuntime = Literal["onnx", "torch"]
_SPLIT_PARTS = ("user_fields", "user_first", "item_fields", "item_first")
_FRESH_KEPT = 4096  # fresh users' vectors and ranker sides kept per process (~2 KB each)
_CONTEXTS_KEPT = 4096  # the ranker's context parts kept per process (~1 KB each)


class _Kept(dict):
    """The latest ``limit`` values by key, the least recently used dropped first."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def get_or(self, key: Any, make: Callable[[], Any]) -> Any:
        """The value of ``key``, made by ``make()`` the first time (and after eviction)."""
        if (value := self.pop(key, None)) is None:
            value = make()
            if len(self) >= self.limit:
                self.pop(next(iter(self)))
        self[key] = value  # the most recently used last
        return value


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of B (user, item) pairs, as numpy arrays."""

    score: np.ndarray  # (B,) float32 final score (see shared.models.rankers.final_score)
    probs: np.ndarray  # (B, T) float32 chained probability (or value) of each task
    features_s: float  # time spent gathering inputs
    scoring_s: float  # time spent in the head


class _OnnxHead:
    """The exported :class:`ServingHead` in onnxruntime, one intra-op thread."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort  # noqa: PLC0415  (optional: torch is the fallback)

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}  # λ = 0 drops the logit

    def __call__(
        self, fields: np.ndarray, first: np.ndarray, logit: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        feed = {"fields": fields, "first": first, "retrieval_logit": logit}
        score, probs = self.session.run(
            ["score", "probs"], {k: v for k, v in feed.items() if k in self.inputs}
        )
        return score, probs


class _TorchHead:
    """The same :class:`ServingHead` in torch (bundles without an ONNX export)."""

    def __init__(self, head: ServingHead) -> None:
        self.head = head.eval()

    def __call__(
        self, fields: np.ndarray, first: np.ndarray, logit: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            score, probs = self.head(
                torch.from_numpy(fields), torch.from_numpy(first), torch.from_numpy(logit)
            )
        return score.numpy(), probs.numpy()


def _mapped(path: Path) -> np.ndarray:
    """A read-only array backed by the file's pages (shared by every process mapping it)."""
    return np.asarray(np.load(path, mmap_mode="r"))


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
    runtime: ModelRuntime  # what runs the ranker's head
    split: SplitTables
    head: _OnnxHead | _TorchHead
    index: faiss.Index
    seen: SeenItems
    hot: np.ndarray  # (I',) item rows, hottest first: global_hot, then every other item
    hot_every: int  # the merge policy of the published lists (shared.recall.merge)
    lists_exclude_seen: bool  # the published lists hold none of a user's seen items
    created_at: float  # Unix time the worker built it: later events are news to it
    score_weights: dict[str, float]
    retrieval_weight: float  # weight of the two-tower logit in the final score
    user_vectors: np.ndarray  # (U, O + 1) two-tower serving vectors of the served histories
    item_vectors: np.ndarray  # (I, O + 1) two-tower serving vectors (the prior's coordinate last)
    tasks: tuple[str, ...]
    item_ids: np.ndarray  # (I,) object: raw id of each item row
    _fresh: _Kept = field(default_factory=lambda: _Kept(_FRESH_KEPT), repr=False)
    _contexts: _Kept = field(default_factory=lambda: _Kept(_CONTEXTS_KEPT), repr=False)
    _similar: _Kept = field(default_factory=lambda: _Kept(_CONTEXTS_KEPT), repr=False)

    # --- loading -----------------------------------------------------------------
    @classmethod
    def load(
        cls, artifacts_dir: Path, version: str, ranker: str = "dcn", runtime: ModelRuntime = "onnx"
    ) -> ServingBundle:
        """Verify and load ``artifacts_dir/version``.

        Args:
            artifacts_dir (Path): the folder of bundles (shared with the worker).
            version (str): the version directory to load.
            ranker (str): ``"dcn"`` or ``"deepfm"``.
            runtime (ModelRuntime): ``"onnx"`` (torch when the bundle has no export) or
                ``"torch"``.

        Returns:
            ServingBundle: the loaded version.

        Raises:
            BundleError: the bundle is missing, partial, corrupt, foreign, or its parts
                do not fit together; the message names the file and the problem.
        """
        started = time.perf_counter()
        try:
            loaded = cls._load(Path(artifacts_dir), version, ranker, runtime)
        except BundleError:
            raise
        except RecsysError as e:
            raise BundleError(str(e)) from None
        except Exception as e:  # polars, FAISS, numpy: a file that is not what it claims
            raise BundleError(
                f"{Path(artifacts_dir) / version}: cannot load bundle: {type(e).__name__}: {e}",
                reason="corrupt",
            ) from e
        log.info(
            "loaded bundle %s (%s ranker on %s, %d users, %d items) in %.2f s",
            version, ranker, loaded.runtime, len(loaded.tables.users) - 1,
            len(loaded.item_ids) - 1, time.perf_counter() - started,
        )  # fmt: skip
        return loaded

    @classmethod
    def _load(
        cls, artifacts: Path, version: str, ranker_kind: str, runtime: ModelRuntime
    ) -> ServingBundle:
        if not version or "/" in version or version.startswith("."):
            raise BundleError(f"{version!r} is not a bundle version")
        bundle = Bundle.open(artifacts, version)
        ranker_prefix = Files.RANKER.format(kind=ranker_kind)
        required = (
            Files.SPEC, Files.FEATURE_MAP, Files.USERS, Files.ITEMS, Files.INTERACTIONS,
            Files.INDEX, Files.HOT, Files.ITEM_EMBEDDINGS, Files.USER_EMBEDDINGS,
            *(p.name for p in checkpoint_paths(bundle.path(Files.TWO_TOWER))),
            *(p.name for p in checkpoint_paths(bundle.path(ranker_prefix))), Files.PROBES,
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
        width = user_tower.config.vector_dim
        vectors = {}
        for name, rows in ((Files.USER_EMBEDDINGS, n_users), (Files.ITEM_EMBEDDINGS, n_items)):
            vectors[name] = _mapped(bundle.path(name))
            if vectors[name].shape != (rows, width) or vectors[name].dtype != np.float32:
                raise BundleError(
                    f"{bundle.path(name)}: {vectors[name].dtype} of shape "
                    f"{vectors[name].shape}, expected float32 ({rows}, {width})"
                )
        split, head, runtime = _scoring(
            bundle, manifest, tables, ranker, weights, retrieval_weight, runtime
        )

        index = faiss.read_index(str(bundle.path(Files.INDEX)))
        if index.ntotal != n_items - 1 or index.d != width:
            raise BundleError(
                f"{bundle.path(Files.INDEX)}: {index.ntotal} vectors of width {index.d}, "
                f"expected {n_items - 1} of width {width}"
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

        served = cls(
            version=version,
            root=bundle.root,
            manifest=manifest,
            tables=tables,
            user_tower=user_tower.eval(),
            ranker=ranker.eval(),
            ranker_kind=ranker_kind,
            runtime=runtime,
            split=split,
            head=head,
            index=index,
            seen=seen,
            hot=hot,
            hot_every=int(serving.get("hot_every", 0)),
            lists_exclude_seen=serving.get("lists_exclude_seen") is True,
            created_at=float(manifest.get("created_at", 0.0)),
            score_weights=weights,
            retrieval_weight=retrieval_weight,
            user_vectors=vectors[Files.USER_EMBEDDINGS],
            item_vectors=vectors[Files.ITEM_EMBEDDINGS],
            tasks=tasks,
            item_ids=tables.items.ids,
        )
        served._prove(read_probes(bundle.path(Files.PROBES), ranker_kind))
        return served

    def _prove(self, probes: list[Probe]) -> None:
        """Refuse to serve unless the arrays are finite and the probe set is reproduced.

        Raises:
            BundleError: ``non_finite`` or ``probe``, naming the array or the difference.
        """
        arrays = {
            Files.USER_EMBEDDINGS: self.user_vectors,
            Files.ITEM_EMBEDDINGS: self.item_vectors,
            **{f"{self.ranker_kind} {p}": getattr(self.split, p) for p in _SPLIT_PARTS},
        }
        for name, array in arrays.items():
            if not np.isfinite(array).all():
                raise BundleError(f"{self.root}: non-finite values in {name}", reason="non_finite")
        for probe in probes:
            rows = np.asarray(probe.item_rows, dtype=np.int64)
            if not 0 <= probe.user_row < len(self.tables.users) or (
                rows.min(initial=1) < 1 or rows.max(initial=1) >= len(self.item_ids)
            ):
                raise BundleError(f"{self.root}: probe rows outside the tables", reason="probe")
            got = self.score(probe.user_row, rows, probe_context(probe, self.tables))
            if why := mismatch(probe, got.score, got.probs):
                raise BundleError(
                    f"{self.root}: the {self.ranker_kind} probe set fails on the "
                    f"{self.runtime} path: {why}",
                    reason="probe",
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

    def context(self, given: Mapping[str, Any], now: datetime) -> Context:
        """A request's encoded context at ``now`` (UTC): the hour and day of week, then
        what ``given`` names (see :meth:`FeatureTables.context_of`, which raises on
        unknown keys and non-numeric numbers)."""
        return self.tables.context_of(given, now.hour, now.weekday())

    # --- retrieval -----------------------------------------------------------------
    def fresh_history(self, user_row: int, recent: np.ndarray) -> np.ndarray:
        """``(H,)`` item id slots: the ``recent`` item rows (newest first), then the served
        history's other items, cut to the served length."""
        served = self.tables.history[user_row]
        slots = self.tables.items.id_slot[recent]
        merged = np.concatenate([slots, served[(served > 0) & ~np.isin(served, slots)]])
        out = np.zeros(len(served), dtype=np.int64)
        out[: min(len(out), len(merged))] = merged[: len(out)]
        return out

    def search(self, user_row: int, k: int, history: np.ndarray | None = None) -> np.ndarray:
        """Item rows nearest the user's two-tower vector, best first; never FAISS's padding.

        Args:
            user_row (int): the user's row (0: the unknown user, OOV features).
            k (int): how many neighbours to ask for (capped at the catalogue).
            history (np.ndarray | None): ``(H,)`` item id slots in place of the served
                history (:meth:`fresh_history`): the user tower runs on them here.

        Returns:
            np.ndarray: ``(≤k,)`` int64 item rows ``≥ 1``.
        """
        rows = nearest(self.index, self.user_vector(user_row, history)[None], k)[0]
        return rows[rows > 0]

    def similar(self, item_row: int, k: int) -> np.ndarray:
        """``(≤k,)`` item rows nearest ``item_row`` by the towers' cosine (the priors'
        coordinates left out), the item itself excluded; kept per item (anchors repeat)."""

        def search() -> np.ndarray:
            query = np.array(self.item_vectors[item_row], dtype=np.float32)
            query[self.user_tower.config.out_dim :] = 0.0
            rows = nearest(self.index, query[None], k + 1)[0]
            return rows[(rows > 0) & (rows != item_row)][:k]

        return self._similar.get_or((item_row, k), search)

    def padded(self, primary: np.ndarray, seen: np.ndarray, n: int, every: int) -> np.ndarray:
        """:func:`shared.recall.merge` for one user: ``primary`` with the memory hot list
        merged in by the published lists' policy (``every``) and padding it to ``n``,
        without repeats or ``seen`` (ascending) rows."""
        if every == 0:  # the hot list only pads: most often, nothing to pad
            kept = primary[~np.isin(primary, seen)] if len(seen) else primary
            if len(kept) >= n and len(np.unique(kept[:n])) == n:
                return kept[:n]
        # enough of the hot list for n survivors even if every seen and primary row is in it
        hot = self.hot[: n + len(seen) + len(primary)]
        candidates = np.concatenate([primary, hot])
        banned = np.isin(candidates, seen)[None] if len(seen) else None
        rows = merge(primary[None], hot, n, every, banned)[0]
        return rows[rows > 0]

    def fresh(
        self,
        user_row: int,
        history: np.ndarray,
        seen: np.ndarray,
        n: int,
        context: Context,
        score: bool,
    ) -> tuple[np.ndarray, ScoredBatch | None]:
        """A fresh history's ``n`` candidates (:meth:`search`, :meth:`padded`) and, with
        ``score``, their scores over the same history: one call for the scoring process."""
        primary = self.search(user_row, n + len(seen), history)
        rows = self.padded(primary, seen, n, self.hot_every)
        scored = self.score(user_row, rows, context, history) if score and len(rows) else None
        return rows, scored

    def user_vector(self, user_row: int, history: np.ndarray | None = None) -> np.ndarray:
        """The user's two-tower serving vector ``(O + 1,)``: precomputed over the served
        history, or from the user tower (torch) over ``history`` (item id slots), computed
        once per user and history (:meth:`_fresh_user`)."""
        if history is None:
            return self.user_vectors[user_row]
        return self._fresh_user(user_row, history)[0]

    def _fresh_user(
        self, user_row: int, history: np.ndarray
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """The user tower's vector and the ranker's user side over a fresh ``history``:
        computed once per (user, history), the latest few thousand kept (exact: a user's
        next requests reuse them until their next event)."""

        def compute() -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
            inputs = self.tables.user_inputs(np.array([user_row]), history[None])
            with torch.inference_mode():
                vector = self.user_tower.vector(inputs).numpy()[0]
            return vector, self.split.user_side(self.ranker, user_row, history)

        return self._fresh.get_or((user_row, history.tobytes()), compute)

    def _context_side(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        """The ranker's context part of ``context``, computed once per distinct context
        (a few hundred at most in practice: hours × days × pages × …; the latest kept)."""
        return self._contexts.get_or(
            context, lambda: self.split.context_side(self.ranker, self.tables, context)
        )

    # --- scoring -------------------------------------------------------------------
    def inputs(
        self,
        user_row: int,
        item_rows: np.ndarray,
        context: Context,
        history: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The head's inputs for one user's items: ``fields``, ``first``, ``retrieval_logit``.

        The two-tower logit ``u'·v'/τ = u·v/τ + β·log q_i`` is a product of the
        precomputed serving vectors (:mod:`shared.models.towers`), or, over a fresh
        ``history``, of the user tower's vector of it.
        """
        fresh = None if history is None else self._fresh_user(user_row, history)
        fields, first = self.split.assemble(
            self.tables, self.ranker, user_row, item_rows, self._context_side(context),
            history, None if fresh is None else fresh[1],
        )  # fmt: skip
        if self.retrieval_weight > 0:
            user = self.user_vectors[user_row] if fresh is None else fresh[0]
            logit = self.item_vectors[item_rows] @ user
            logit /= np.float32(self.user_tower.config.temperature)
        else:
            logit = np.zeros(len(item_rows), dtype=np.float32)
        return fields, first, logit

    def score(
        self,
        user_row: int,
        item_rows: np.ndarray,
        context: Context,
        history: np.ndarray | None = None,
    ) -> ScoredBatch:
        """The final score and every ``p_t`` of one user's items (in the caller's thread)."""
        t0 = time.perf_counter()
        inputs = self.inputs(user_row, item_rows, context, history)
        t1 = time.perf_counter()
        score, probs = self.head(*inputs)
        return ScoredBatch(score, probs, t1 - t0, time.perf_counter() - t1)


def _scoring(
    bundle: Bundle,
    manifest: dict[str, Any],
    tables: FeatureTables,
    ranker: Ranker,
    weights: dict[str, float],
    retrieval_weight: float,
    runtime: ModelRuntime,
) -> tuple[SplitTables, _OnnxHead | _TorchHead, ModelRuntime]:
    """The ranker's per-side tables and head: the worker's export, else built here in torch."""
    kind = ranker.kind
    head_file = Files.RANKER_HEAD.format(kind=kind)
    parts = {p: Files.RANKER_SPLIT.format(kind=kind, part=p) for p in _SPLIT_PARTS}
    exported = all(name in manifest["files"] for name in (head_file, *parts.values()))
    if runtime == "onnx" and exported:
        arrays = {p: _mapped(bundle.path(name)) for p, name in parts.items()}
        want = {
            "user_fields": len(tables.users), "user_first": len(tables.users),
            "item_fields": len(tables.items), "item_first": len(tables.items),
        }  # fmt: skip
        for p, rows in want.items():
            if arrays[p].shape[0] != rows or arrays[p].dtype != np.float32:
                raise BundleError(
                    f"{bundle.path(parts[p])}: {arrays[p].dtype} with {arrays[p].shape[0]} "
                    f"rows, expected float32 with {rows}"
                )
        try:
            head: _OnnxHead | _TorchHead = _OnnxHead(bundle.path(head_file))
        except ImportError:
            log.warning("onnxruntime is not installed: scoring with torch")
        else:
            return build_split(ranker, tables, arrays), head, "onnx"
    elif runtime == "onnx":
        log.warning("%s has no ONNX export of the %s ranker: scoring with torch", bundle.root, kind)
    head = _TorchHead(ServingHead(ranker, weights, retrieval_weight))
    return build_split(ranker, tables, split_tables(ranker, tables)), head, "torch"


def _check_fits(
    root: Path, tables: FeatureTables, fmap: FeatureMap, user_tower: nn.Module, ranker: Ranker
) -> None:
    """Models trained on another feature map or table layout would score garbage: refuse."""
    c = ranker.config
    widths = tables.ranker_widths
    got = {"vocab_size": c.vocab_size, "n_cat": c.n_cat, "n_multi": c.n_multi, "n_dense": c.n_dense,
           "dense_widths": c.dense_widths}  # fmt: skip
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
