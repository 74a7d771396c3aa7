"""The ranker's serving form: per-side parts computed once, a small head per request.

A ranker's ``sparse_arch`` embeds every field on its own, and the first linear maps
of its interaction (:meth:`Ranker.first_weight`) act on the flat fields, so both split
into a user part, an item part and a context part::

    fields = place(user_f[u], item_f[i], context_f[c])            (B, F, W)
    first  = user_p[u] + item_p[i] + context_p[c]                 (B, P)
    side_p = flat(side_f) @ W[:, side columns]^T

:func:`split_tables` computes those parts from the ranker and the feature tables
(the same ``ranker_inputs`` and ``sparse_arch`` as training, so nothing drifts), and
:meth:`SplitTables.context_side` the context part of one request's context (the
gateway keeps the contexts it has seen); :meth:`SplitTables.assemble` gathers them for
one user's B items in one context;
:class:`ServingHead` is the rest of the model, ``(fields, first, retrieval_logit) →
(score, probs)``, which the worker also exports to ONNX (:func:`export_head`). The one
field that is not a pure user field: the history masks the scored item, so a
candidate inside the user's own history gets its history field and first-layer terms
recomputed (rare: ``/recommend`` excludes seen items).

Legend: B scored rows, F fields, W embedding width (``D``, or ``D + T`` for DeepFM),
P first-layer outputs, U users, I items, Fc context fields, T tasks.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shared.features import Context, ContextBatch, FeatureTables
from shared.models.inputs import UserInputs
from shared.models.rankers import (
    Ranker,
    chain_probabilities,
    check_weights,
    final_score,
    weighted_sum,
)

__all__ = [
    "HEAD_INPUTS",
    "ServingHead",
    "UserVectors",
    "SplitTables",
    "build_split",
    "export_head",
    "export_onnx",
    "onnx_difference",
    "onnx_parity",
    "split_tables",
]

log = logging.getLogger(__name__)


class ServingHead(nn.Module):
    """Everything of the final score after the field embeddings and the first linear maps.

    ``score = final_score(Σ_t w_t p_t, logit, λ)`` with ``p = chain(head_from_first(fields,
    first))`` (see :meth:`Ranker.head_from_first` and
    :func:`~shared.models.rankers.final_score`).

    Args:
        ranker (Ranker): the trained ranker.
        weights (Mapping[str, float]): score weight of each task.
        retrieval_weight (float): λ, the two-tower logit's weight (0: the ranker alone).

    Call:
        fields (Tensor): ``(B, F, W)``.
        first (Tensor): ``(B, P)``.
        retrieval_logit (Tensor): ``(B,)`` ``u·v/τ`` (unused when λ = 0).

    Returns:
        tuple[Tensor, Tensor]: the score ``(B,)`` and each task's probability ``(B, T)``.
    """

    def __init__(
        self, ranker: Ranker, weights: Mapping[str, float], retrieval_weight: float
    ) -> None:
        super().__init__()
        check_weights(weights, ranker.config.tasks)
        self.ranker = ranker
        self.weights = dict(weights)
        self.retrieval_weight = float(retrieval_weight)
        self.tasks = tuple(t.name for t in ranker.config.tasks)

    def forward(
        self, fields: torch.Tensor, first: torch.Tensor, retrieval_logit: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        probs = chain_probabilities(
            self.ranker.head_from_first(fields, first), self.ranker.config.tasks
        )
        logit = retrieval_logit if self.retrieval_weight > 0 else None
        score = final_score(weighted_sum(probs, self.weights), logit, self.retrieval_weight)
        return score, torch.stack([probs[t] for t in self.tasks], dim=1)  # (B,), (B, T)


@dataclass(frozen=True)
class SplitTables:
    """A ranker's per-side parts (``*_fields``: field embeddings, ``*_first``: first-layer terms).

    The user side holds the user's fields followed by the history field. Arrays may be
    memory-mapped files (shared by every gateway worker).
    """

    user_fields: np.ndarray  # (U, Fu + 1, W)
    user_first: np.ndarray  # (U, P)
    item_fields: np.ndarray  # (I, Fi, W)
    item_first: np.ndarray  # (I, P)
    first_weight: np.ndarray  # (P, F·W)
    user_weight: np.ndarray  # (P, (Fu + 1)·W): its columns of the user side, in user_fields' order
    context_positions: np.ndarray  # (Fc,) the context's fields
    context_weight: np.ndarray  # (P, Fc·W): its columns of the context's fields
    # (destination field, source field, length) of each run of one side's consecutive fields
    user_runs: tuple[tuple[int, int, int], ...]
    item_runs: tuple[tuple[int, int, int], ...]
    context_runs: tuple[tuple[int, int, int], ...]
    history_position: int  # the history's field

    def assemble(
        self,
        tables: FeatureTables,
        ranker: Ranker,
        user_row: int,
        item_rows: np.ndarray,
        context: tuple[np.ndarray, np.ndarray],
        history: np.ndarray | None = None,
        side: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(fields (B, F, W), first (B, P))`` of one user's items, equal to the unsplit path's.

        The item side is gathered per item; the user and context sides are one row each,
        broadcast over the items.

        Args:
            tables (FeatureTables): the served history and item id slots.
            ranker (Ranker): its ``sparse_arch`` pools a history with the item masked.
            user_row (int): the user's row.
            item_rows (np.ndarray): ``(B,)`` item rows.
            context (tuple): the context's fields ``(Fc, W)`` and first-layer terms
                ``(P,)`` (:meth:`context_side`).
            history (np.ndarray | None): ``(H,)`` item id slots, most recent first, in place
                of the served history (a user's fresh events).
            side (tuple | None): with ``history``, the user's fields and first-layer terms
                over it (:meth:`user_side`, computed once per user and history by the caller).
        """
        b, width = len(item_rows), self.item_fields.shape[2]
        fields = np.empty((b, self.first_weight.shape[1] // width, width), dtype=np.float32)
        items = self.item_fields[item_rows]  # (B, Fi, W)
        ctx, ctx_first = context
        if history is None:
            user, user_first = self.user_fields[user_row], self.user_first[user_row]
            history = tables.history[user_row]  # (H,)
        else:
            assert side is not None, "a fresh history comes with its user side"
            user, user_first = side
        for runs, part in ((self.item_runs, items), (self.user_runs, user[None]),
                           (self.context_runs, ctx[None])):  # fmt: skip
            for dst, src, n in runs:
                fields[:, dst : dst + n] = part[:, src : src + n]
        first = self.item_first[item_rows]  # (B, P)
        first += user_first + ctx_first
        own = tables.items.id_slot[item_rows, None] == history  # (B, H): the item in its history
        if own.any():
            hit = np.flatnonzero(own.any(axis=1))
            masked = np.where(own[hit], 0, history)
            with torch.inference_mode():
                pooled = ranker.sparse_arch.pool(
                    torch.from_numpy(masked), float(ranker.config.history_decay)
                )
            fields[hit, self.history_position] = pooled.numpy()
            first[hit] = fields[hit].reshape(len(hit), -1) @ self.first_weight.T
        return fields, first

    def context_side(
        self, ranker: Ranker, tables: FeatureTables, context: Context
    ) -> tuple[np.ndarray, np.ndarray]:
        """The context's fields ``(Fc, W)`` and first-layer terms ``(P,)``: its own
        ``ranker_inputs`` row (user and item row 0) embedded and cut to the context fields."""
        zero = np.zeros(1, dtype=np.int64)
        x = tables.ranker_inputs(zero, zero, ContextBatch.of(context))
        with torch.inference_mode():
            fields = ranker.sparse_arch(x.cat, x.multi, x.dense)[0].numpy()
        fields = np.ascontiguousarray(fields[self.context_positions])
        return fields, fields.reshape(-1) @ self.context_weight.T

    def user_side(
        self, ranker: Ranker, user_row: int, history: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The user's fields ``(Fu + 1, W)`` and first-layer terms ``(P,)`` over ``history``."""
        fields = np.array(self.user_fields[user_row])
        with torch.inference_mode():
            pooled = ranker.sparse_arch.pool(
                torch.from_numpy(np.ascontiguousarray(history, dtype=np.int64)[None]),
                float(ranker.config.history_decay),
            )
        fields[-1] = pooled[0].numpy()
        return fields, fields.reshape(-1) @ self.user_weight.T


def _columns(positions: np.ndarray, width: int) -> np.ndarray:
    """The flat ``F·W`` columns of the fields at ``positions``, field by field."""
    return (positions[:, None] * width + np.arange(width)).reshape(-1)


def _runs(positions: np.ndarray) -> tuple[tuple[int, int, int], ...]:
    """``(destination, source, length)`` of each run of consecutive field positions."""
    runs: list[list[int]] = []
    for src, dst in enumerate(positions.tolist()):
        if runs and runs[-1][0] + runs[-1][2] == dst:
            runs[-1][2] += 1
        else:
            runs.append([dst, src, 1])
    return tuple((d, s, n) for d, s, n in runs)


def _side_parts(
    ranker: Ranker, inputs_of: object, rows: int, positions: np.ndarray, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fields at ``positions`` and their first-layer terms for ``rows`` rows, in chunks."""
    weight = ranker.first_weight()  # (P, F·W)
    width = ranker.sparse_arch.embedding.embedding_dim
    w_side = weight[:, torch.from_numpy(_columns(positions, width))]  # (P, F_side·W)
    fields_out = np.empty((rows, len(positions), width), dtype=np.float32)
    first_out = np.empty((rows, weight.shape[0]), dtype=np.float32)
    with torch.inference_mode():
        for lo in range(0, rows, chunk):
            hi = min(lo + chunk, rows)
            x = inputs_of(np.arange(lo, hi))  # type: ignore[operator]
            fields = ranker.sparse_arch(x.cat, x.multi, x.dense)[:, torch.from_numpy(positions)]
            fields_out[lo:hi] = fields.numpy()
            first_out[lo:hi] = (fields.flatten(1) @ w_side.T).numpy()
    return fields_out, first_out


def split_tables(
    ranker: Ranker,
    tables: FeatureTables,
    sides: tuple[str, ...] = ("user", "item"),
    chunk: int = 8192,
) -> dict[str, np.ndarray]:
    """The per-side parts of :class:`SplitTables` (``{side}_fields``, ``{side}_first``).

    Each side is embedded by the ranker's own ``sparse_arch`` over ``ranker_inputs`` rows
    that hold the side's rows and row 0 (and a default context) elsewhere, then cut to
    the side's fields; the user side's history is the served one, unmasked (item row 0
    is never in it).
    """
    layout = tables.ranker_layout
    zeros = np.zeros
    makers = {
        "user": (
            len(tables.users),
            np.append(layout.user, layout.history),
            lambda r: tables.ranker_inputs(r, zeros(len(r), np.int64),
                                           tables.default_context(len(r))),
        ),
        "item": (
            len(tables.items),
            layout.item,
            lambda r: tables.ranker_inputs(zeros(len(r), np.int64), r,
                                           tables.default_context(len(r))),
        ),
    }  # fmt: skip
    out = {}
    for side in sides:
        rows, positions, inputs_of = makers[side]
        out[f"{side}_fields"], out[f"{side}_first"] = _side_parts(
            ranker, inputs_of, rows, positions, chunk
        )
    return out


def build_split(
    ranker: Ranker, tables: FeatureTables, arrays: Mapping[str, np.ndarray]
) -> SplitTables:
    """A :class:`SplitTables` from the arrays of :func:`split_tables` (or their saved files)."""
    layout = tables.ranker_layout
    weight = ranker.first_weight().detach().numpy()
    width = weight.shape[1] // layout.n_fields
    user = np.append(layout.user, layout.history)
    return SplitTables(
        **{k: arrays[k] for k in arrays},
        first_weight=weight,
        user_weight=np.ascontiguousarray(weight[:, _columns(user, width)]),
        context_positions=layout.context,
        context_weight=np.ascontiguousarray(weight[:, _columns(layout.context, width)]),
        user_runs=_runs(user),
        item_runs=_runs(layout.item),
        context_runs=_runs(layout.context),
        history_position=layout.history,
    )


def export_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    inputs: Sequence[str],
    outputs: Sequence[str],
    path: Path,
) -> None:
    """Write ``module`` as an ONNX graph whose every input has a dynamic batch axis."""
    batch = torch.export.Dim("batch")
    # the exporter narrates every stage on stdout and the logs, and warns about its own
    # internals: keep the worker's output to its one line per step
    quiet = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(),
                example,
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_shapes=tuple({0: batch} for _ in example),
                dynamo=True,
                verbose=False,
            )
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    program.save(str(path))


def onnx_difference(
    module: nn.Module, example: tuple[torch.Tensor, ...], inputs: Sequence[str], path: Path
) -> float:
    """Largest difference between the ONNX graph at ``path`` and ``module`` on ``example``.

    Raises:
        ValueError: a difference above 1e-4 (the export changed the model).
    """
    import onnxruntime  # noqa: PLC0415  (the worker needs it only here)

    with torch.inference_mode():
        want = module(*example)
    want = [t.numpy() for t in (want if isinstance(want, tuple) else (want,))]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}  # an unused input is dropped by the export
    feed = {n: t.numpy() for n, t in zip(inputs, example, strict=True) if n in names}
    got = session.run(None, feed)
    error = max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
    if not error <= 1e-4:
        raise ValueError(f"{path}: the ONNX graph differs from torch by {error:.2e}")
    return error


HEAD_INPUTS = ("fields", "first", "retrieval_logit")


def _head_example(head: ServingHead, n_fields: int, width: int, rows: int) -> tuple:
    generator = torch.Generator().manual_seed(0)
    p = head.ranker.first_weight().shape[0]
    return (
        torch.randn(rows, n_fields, width, generator=generator) * 0.1,
        torch.randn(rows, p, generator=generator) * 0.1,
        torch.randn(rows, generator=generator),
    )


def export_head(head: ServingHead, n_fields: int, width: int, path: Path) -> None:
    """Write ``head`` as ONNX: inputs ``fields (B, F, W)``, ``first (B, P)``,
    ``retrieval_logit (B,)``; outputs ``score (B,)``, ``probs (B, T)``."""
    export_onnx(
        head, _head_example(head, n_fields, width, 4), HEAD_INPUTS, ("score", "probs"), path
    )


def onnx_parity(head: ServingHead, path: Path, n_fields: int, width: int, rows: int = 64) -> float:
    """:func:`onnx_difference` of an exported head on random inputs of another batch size."""
    return onnx_difference(head, _head_example(head, n_fields, width, rows), HEAD_INPUTS, path)


class UserVectors(nn.Module):
    """The user tower's serving vector over plain tensors (``UserInputs``' fields), for the
    ONNX export."""

    INPUTS = ("id", "cat", "multi", "dense", "history")

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(
        self,
        id: torch.Tensor,  # noqa: A002  (the field's name)
        cat: torch.Tensor,
        multi: torch.Tensor,
        dense: torch.Tensor,
        history: torch.Tensor,
    ) -> torch.Tensor:
        return self.tower.vector(UserInputs(id, cat, multi, dense, history))  # (B, O + 1)
