"""Scoring one request's candidates: inputs on the event loop, the head where configured.

The head's inputs (:meth:`ServingBundle.inputs`) are a few array gathers, built on the
event loop; the head (onnxruntime or torch, both release the GIL while they compute)
runs on the model thread when ``score_in_thread`` is on, so the event loop accepts
and answers other requests meanwhile, or inline on the event loop.

Micro-batching concurrent requests into one forward pass was measured and dropped:
on CPU a pass over 32 × 100 candidates costs more per candidate than 32 passes over
100 (the batch's arrays leave the cache), and gathering the batch costs GIL hand-offs.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from services.gateway.bundle import ServingBundle

__all__ = ["Scorer", "Scores"]


@dataclass(frozen=True)
class Scores:
    """One request's scores."""

    score: np.ndarray  # (n,) final ranking score
    probs: np.ndarray  # (n, T) per-task probabilities, in ServingBundle.tasks order
    features_s: float  # time spent building the head's inputs
    scoring_s: float  # time spent in the head (including the hand-off to its thread)


class Scorer:
    """Scores a user's items with the bundle's ranker.

    Args:
        executor (Executor | None): the model thread, or None to run the head inline.
    """

    def __init__(self, executor: Executor | None) -> None:
        self.executor = executor

    async def score(
        self, bundle: ServingBundle, user_row: int, items: np.ndarray, hour: int, dow: int
    ) -> Scores:
        t0 = time.perf_counter()
        inputs = bundle.inputs(user_row, items, hour, dow)
        t1 = time.perf_counter()
        if self.executor is None:
            score, probs = bundle.head(*inputs)
        else:
            loop = asyncio.get_running_loop()
            score, probs = await loop.run_in_executor(self.executor, bundle.head, *inputs)
        return Scores(score, probs, t1 - t0, time.perf_counter() - t1)
