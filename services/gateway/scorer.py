"""Micro-batching: the candidates of concurrent requests are scored in one forward pass.

Requests put a job on an asyncio queue and await its future. One scorer task takes
the first job, everything already queued, and, while other requests are still in
their recall stage, waits ``batch_wait_ms`` for them (up to ``max_batch`` jobs); then
it runs one forward pass per served bundle version in the batch on the model thread
(a single-thread executor, so the event loop keeps accepting requests meanwhile; or,
with ``score_in_thread`` off, on the event loop itself) and hands each job its slice
of the scores.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from services.gateway.metrics import Metrics
from shared.errors import RecsysError
from shared.serving import ServingBundle

__all__ = ["BatchScorer", "Scores"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    """One request's share of a batch."""

    score: np.ndarray  # (n,) final ranking score
    probs: np.ndarray  # (n, T) per-task probabilities, in ServingBundle.tasks order
    features_s: float  # the batch's input-building time
    scoring_s: float  # the batch's forward-pass time
    batch_size: int  # requests scored together


@dataclass
class _Job:
    bundle: ServingBundle
    user_row: int
    items: np.ndarray  # (n,) item rows
    hour: int
    dow: int
    future: asyncio.Future[Scores]


class BatchScorer:
    """Collects scoring jobs and runs them in batches on ``executor``.

    Args:
        max_batch (int): most requests in one forward pass.
        wait_s (float): how long a batch waits for requests still in recall.
        executor (Executor | None): where forward passes run (one thread), or None to
            run them on the event loop itself (no thread hand-off or GIL contention: the
            cheaper choice when no spare core would run the thread in parallel).
        metrics (Metrics | None): where batch sizes are recorded.
    """

    def __init__(
        self,
        *,
        max_batch: int,
        wait_s: float,
        executor: Executor | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.executor = executor
        self._batch_size = metrics.batch_size if metrics is not None else None
        self.batches = 0  # forward rounds run, for tests and debugging
        self.jobs = 0
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._upstream = 0  # requests in their recall stage, about to submit
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="recsys-scorer")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RecsysError("the gateway is shutting down"))

    @contextmanager
    def expect(self) -> Iterator[None]:
        """Mark a request that will submit a job soon (a batch waits for it)."""
        self._upstream += 1
        try:
            yield
        finally:
            self._upstream -= 1

    async def score(
        self, bundle: ServingBundle, user_row: int, items: np.ndarray, hour: int, dow: int
    ) -> Scores:
        """Scores of ``items`` for one user, computed in the next batch."""
        if self._task is None or self._task.done():
            raise RecsysError("the scorer is not running")
        future: asyncio.Future[Scores] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(bundle, user_row, items, hour, dow, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            self._drain(jobs)
            if self.wait_s > 0 and len(jobs) < self.max_batch and self._upstream > 0:
                await asyncio.sleep(self.wait_s)
                self._drain(jobs)
            jobs = [j for j in jobs if not j.future.done()]  # the client went away
            if not jobs:
                continue
            try:
                if self.executor is None:
                    results = _forward(jobs)
                else:
                    results = await loop.run_in_executor(self.executor, _forward, jobs)
            except Exception as e:  # a bad batch must not stop the scorer
                log.exception("scoring a batch of %d requests failed", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            self.batches += 1
            self.jobs += len(jobs)
            if self._batch_size is not None:
                self._batch_size.observe(len(jobs))
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    def _drain(self, jobs: list[_Job]) -> None:
        while len(jobs) < self.max_batch and not self._queue.empty():
            jobs.append(self._queue.get_nowait())


def _forward(jobs: list[_Job]) -> list[Scores]:
    """Score every job: one forward pass per bundle version among them (normally one)."""
    out: list[Scores | None] = [None] * len(jobs)
    groups: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):  # per request, not per candidate
        groups.setdefault(id(job.bundle), []).append(i)
    for members in groups.values():
        bundle = jobs[members[0]].bundle
        sizes = np.array([len(jobs[i].items) for i in members])
        batch = bundle.score(
            np.repeat(np.array([jobs[i].user_row for i in members], dtype=np.int64), sizes),
            np.concatenate([jobs[i].items for i in members]),
            np.repeat(np.array([jobs[i].hour for i in members], dtype=np.int64), sizes),
            np.repeat(np.array([jobs[i].dow for i in members], dtype=np.int64), sizes),
        )
        bounds = np.cumsum(sizes)[:-1]
        for i, score, probs in zip(
            members, np.split(batch.score, bounds), np.split(batch.probs, bounds), strict=True
        ):
            out[i] = Scores(score, probs, batch.features_s, batch.scoring_s, len(members))
    return out  # type: ignore[return-value]
