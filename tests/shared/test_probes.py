"""``shared.probes.mismatch``: what a probe set lets through and what it refuses."""

from __future__ import annotations

import numpy as np

from shared.probes import Probe, mismatch


def _probe(score: list[float]) -> Probe:
    return Probe(user_row=3, item_rows=[1, 2], score=score, probs=[[0.1, 0.01], [2e-5, 1e-6]])


def test_a_log_score_is_checked_relative_to_its_scale() -> None:
    probs = np.array([[0.1, 0.01], [2e-5, 1e-6]])
    # a tiny Σ w·p turns float32 noise into 1e-4 of a log score of −8.3: accepted
    assert mismatch(_probe([0.5, -8.311]), np.array([0.5, -8.311106]), probs) is None
    # a real difference is still refused, named relative to the scale
    why = mismatch(_probe([0.5, -8.311]), np.array([0.5, -8.32]), probs)
    assert why is not None and "of the score's scale 8.31" in why
    # near zero the bound is absolute
    assert mismatch(_probe([0.5, 0.2]), np.array([0.5, 0.20015]), probs) is not None


def test_probabilities_stay_absolute_and_non_finite_values_fail() -> None:
    probs = np.array([[0.1, 0.01], [2e-5, 1e-6]])
    assert mismatch(_probe([0.5, 0.2]), np.array([0.5, 0.2]), probs + 2e-4) is not None
    assert "non-finite" in mismatch(_probe([0.5, 0.2]), np.array([np.nan, 0.2]), probs)
