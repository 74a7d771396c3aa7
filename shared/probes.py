"""A model proves itself before it serves: a probe set of fixed pairs and their scores.

The worker's ``export`` step picks a few users (the unknown one too) and, for each, a
few items and a context (hour, day of week, the spec's context features), and writes the final score and every task's
probability the offline model gives them (``probes.json``, one entry per ranker).
The gateway scores the same pairs along its serving path after loading a version and
refuses it unless every score is finite and within ``TOLERANCE`` of the offline one:
weights that are NaN, or bytes flipped under a re-hashed manifest, cannot serve.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shared.errors import BundleError
from shared.features import Context, FeatureTables

__all__ = ["TOLERANCE", "Probe", "mismatch", "probe_context", "read_probes", "write_probes"]

TOLERANCE = 1e-4  # the serving path matches the offline one within 1e-5 (tests/services)


@dataclass(frozen=True)
class Probe:
    """One user's probe pairs and the offline model's answers for them."""

    user_row: int
    item_rows: list[int]
    score: list[float]  # final score of each item
    probs: list[list[float]]  # (items, tasks) chained probabilities, in the ranker's task order
    context_cat: list[int] | None = None  # the context's slots (shared.features.Context)
    context_dense: list[float] = field(default_factory=list)
    anchor_row: int = 0
    # bundles written before request context: the hour and day of week alone
    hour: int | None = None
    dow: int | None = None


def probe_context(probe: Probe, tables: FeatureTables) -> Context:
    """The probe's encoded context (a probe of an older bundle names its hour and day)."""
    if probe.context_cat is None:
        return tables.context_of({}, int(probe.hour or 0), int(probe.dow or 0))
    return Context(tuple(probe.context_cat), tuple(probe.context_dense), probe.anchor_row)


def write_probes(path: Path, probes: dict[str, list[Probe]]) -> None:
    """``probes``: ranker kind → its probe set."""
    data = {kind: [asdict(p) for p in ps] for kind, ps in probes.items()}
    path.write_text(json.dumps(data))


def read_probes(path: Path, kind: str) -> list[Probe]:
    """The probe set of the ``kind`` ranker.

    Raises:
        BundleError: no probes for that ranker, or a file that is not a probe set.
    """
    try:
        entries = json.loads(path.read_text())[kind]
        probes = [Probe(**entry) for entry in entries]
    except KeyError:
        raise BundleError(f"{path}: no probe set for the {kind} ranker", reason="probe") from None
    except (OSError, ValueError, TypeError) as e:
        raise BundleError(f"{path}: not a probe set ({e})", reason="probe") from None
    if not probes:
        raise BundleError(f"{path}: the {kind} probe set is empty", reason="probe")
    return probes


def mismatch(probe: Probe, score: np.ndarray, probs: np.ndarray) -> str | None:
    """Why the served ``score`` (n,) and ``probs`` (n, T) fail the probe, or None."""
    for name, got, want in (("score", score, probe.score), ("probabilities", probs, probe.probs)):
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            return f"{name} of shape {got.shape}, the probe has {want.shape}"
        if not np.isfinite(got).all():
            return f"non-finite {name} for user row {probe.user_row}"
        # with a retrieval weight the score is log(Σ w·p) + λ·logit: a log turns the last
        # float32 digits of a tiny Σ into 1e-4 of score (probabilities of 1e-5 matching
        # within 1e-7 gave 1.06e-4 at a score of −8.3), so the score's bound is relative
        scale = max(1.0, float(np.abs(want).max(initial=0.0))) if name == "score" else 1.0
        worst = float((np.abs(got - want) / scale).max(initial=0.0))
        if worst > TOLERANCE:
            bound = "" if scale == 1.0 else f" of the score's scale {scale:.3g}"
            return (
                f"{name} differ from the offline model's by {worst:.2e}{bound} "
                f"(user row {probe.user_row})"
            )
    return None
