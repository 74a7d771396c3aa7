"""What the endpoints do: recall, then features and scores, then the top k.

Recall for a user, in order of preference, from one Redis round trip that also reads
the user's recent positive items (``recent:{uid}``, kept by ``POST /events``):

1. fresh events (a recent item newer than the bundle): the user tower over the fresh
   history (the recent items, then the served history) and FAISS, online, in the
   scoring process; a cold user with events is personalized so too
   (``recsys_fresh_recalls_total``). The ranker then reads the same fresh history;
   the user tower's vector and the ranker's user side over it are computed once per
   (user, history) — on ``POST /events`` already, by the scoring process while no
   request waits (``recsys_fresh_warmed_total``) — and kept for the next requests;
2. the served version's ``recall:{uid}`` ZSET in Redis;
3. a user the bundle knows but Redis has no list for: the user's two-tower vector and
   FAISS, online, merged with the hot list by the published lists' policy
   (``recsys_fallbacks_total{reason="online_tower"}``);
4. a user the bundle does not know (a cold start): the version's ``global_hot`` ZSET
   blended with what is trending now (``trending_weight``; ``reason="global_hot"``);
5. Redis unreachable (within ``redis_timeout_s``: a stall is not retried): the hot list the
   bundle holds in memory, with ``degraded: true`` (``reason="memory_hot"``); never an
   error. While Redis answers but names no active version (restarted empty), answers
   come from 3. and 4. and say ``degraded: true`` too.

Every list then drops unknown items, FAISS padding, repeats and (``exclude_seen``) the
items the user already interacted with (in the bundle or since, as recent items), and
is padded from the memory hot list up to the count asked for
(:meth:`~services.gateway.bundle.ServingBundle.padded`; a published list is already
clean, so only its seen items are checked, and only if the worker did not leave them
out). Scores come from one pass of the ranker's head over the candidates
(:class:`~services.gateway.scorer.Scorer`); responses are plain dicts in the schemas'
shape, rendered by orjson.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import redis.asyncio as aredis
from redis.exceptions import RedisError

from services.gateway.bundle import ScoredBatch, ServingBundle
from services.gateway.metrics import Metrics
from services.gateway.schemas import RerankRequest
from services.gateway.scorer import Scorer
from shared.features import Context
from shared.keys import Keys
from shared.recall import blend
from shared.settings import Settings

__all__ = ["Candidates", "Clock", "Recommender", "request_id", "utc_now"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
_NONE = np.empty(0, dtype=np.int64)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Candidates:
    """The recall stage's answer for one user."""

    user_row: int  # 0: unknown to the bundle (cold features)
    rows: np.ndarray  # (n,) item rows, best first
    source: str  # fresh_history | redis | online_tower | global_hot | memory_hot
    degraded: bool
    history: np.ndarray | None = None  # (H,) item id slots of a fresh history, for the ranker
    scores: ScoredBatch | None = None  # scored along with a fresh recall

    @property
    def is_cold_start(self) -> bool:
        return self.user_row == 0


class Recommender:
    """The endpoints' logic over one served bundle at a time.

    Args:
        settings (Settings): candidate counts, ``exclude_seen``.
        redis (redis.asyncio.Redis): the online store (short timeouts, no backoff).
        scorer (Scorer): the ranker, and the online user tower + FAISS.
        metrics (Metrics): where stage latencies, cold starts and fallbacks go.
        clock (Clock): the current time, for the hour and day-of-week context features.
    """

    def __init__(
        self,
        settings: Settings,
        redis: aredis.Redis,
        scorer: Scorer,
        metrics: Metrics,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.redis = redis
        self.scorer = scorer
        self.trending: tuple[str, ...] = ()  # item ids trending now (Runtime.sync)
        self._trending_rows: tuple[str, tuple[str, ...], np.ndarray] | None = None
        self.metrics = metrics
        self.clock = clock
        self._redis_down = False  # log outages once, not once per request
        self.store_empty = False  # Redis answers but names no active version (Runtime.sync)
        self._recall_seconds = metrics.stage_latency.labels("recall")
        self._features_seconds = metrics.stage_latency.labels("features")
        self._scoring_seconds = metrics.stage_latency.labels("scoring")

    # --- stages --------------------------------------------------------------------
    def context(self, bundle: ServingBundle, given: Mapping[str, Any]) -> Context:
        """A request's context now (see :meth:`ServingBundle.context`; raises on unknown
        keys and non-numeric numbers)."""
        return bundle.context(given, self.clock().astimezone(UTC))

    async def candidates(
        self, bundle: ServingBundle, uid: str, n: int, context: Context, score: bool = False
    ) -> Candidates:
        """Up to ``n`` item rows for ``uid`` in ``context`` (an anchor's nearest items join
        them; fewer only when the catalogue runs out); ``score``: the caller will score
        them (a fresh recall then scores in the same trip)."""
        started = time.perf_counter()
        user_row = bundle.user_row(uid)
        seen = bundle.seen.of(user_row) if self.settings.exclude_seen else _NONE
        source, degraded, primary, history, scores = "redis", False, _NONE, None, None
        recent = _NONE
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrevrange(self.keys.recall(bundle.version, uid), 0, n - 1)
            pipe.zrevrange(self.keys.recent(uid), 0, -1, withscores=True)
            if not user_row:  # a cold user may still have a list; the hot list in the same trip
                pipe.zrevrange(self.keys.global_hot(bundle.version), 0, n - 1)
            listed, events, *hot = await pipe.execute()
        except (RedisError, OSError) as e:
            if not self._redis_down:
                log.warning("redis unreachable (%s): answering from the memory hot list", e)
                self._redis_down = True
            self.metrics.errors.labels("redis").inc()
            source, degraded = "memory_hot", True
        else:
            if self._redis_down:
                log.warning("redis answers again: recall lists are back")
                self._redis_down = False
            degraded = self.store_empty
            if events:
                recent, history = _recent(bundle, user_row, events)
                if self.settings.exclude_seen:
                    seen = np.union1d(seen, recent)
            if history is not None:  # recall and, if asked, scores in one trip
                source = "fresh_history"
                primary, scores = await self.scorer.fresh(
                    bundle, user_row, history, seen, n, context,
                    score and not context.anchor,  # an anchor changes the list
                )  # fmt: skip
            elif listed:  # a ZSET: distinct, and already merged by the published policy
                primary = bundle.item_rows(listed)
                if bundle.lists_exclude_seen and not len(recent):
                    primary = primary[primary > 0]
                else:
                    primary = primary[(primary > 0) & ~_member(primary, seen)]
            elif user_row:
                source = "online_tower"
                primary = await self.scorer.search(bundle, user_row, n + len(seen))
            else:
                source = "global_hot"
                primary = blend(
                    self._trending(bundle), bundle.item_rows(hot[0]), self.settings.trending_weight
                )
        if context.anchor:  # "more like this": its neighbours join
            near = bundle.similar(context.anchor, n)
            primary = blend(near[~_member(near, seen)], primary, self.settings.anchor_weight)
            self.metrics.anchor_recalls.inc()
        if source == "fresh_history" or (source == "redis" and len(primary) >= n):
            rows = primary[:n]  # nothing (more) to merge
        else:
            every = bundle.hot_every if source == "online_tower" else 0
            rows = bundle.padded(primary, seen, n, every)
        if source == "fresh_history":
            self.metrics.fresh_recalls.inc()
        elif source != "redis":
            self.metrics.fallbacks.labels(source).inc()
        if not user_row:
            self.metrics.cold_starts.inc()
        self._recall_seconds.observe(time.perf_counter() - started)
        if scores is not None:
            self._features_seconds.observe(scores.features_s)
            self._scoring_seconds.observe(scores.scoring_s)
        return Candidates(user_row, rows, source, degraded, history, scores)

    def warm(self, bundle: ServingBundle, recent: Mapping[str, list[tuple[str, float]]]) -> int:
        """Have the scoring process compute, ahead of their next request, the fresh user
        side of users who just sent positive events (``recent``: their recent items, as
        :meth:`EventLog.record` returns them; it runs them while no request waits); how
        many were sent."""
        sent = 0
        for uid, events in recent.items():
            user_row = bundle.user_row(uid)
            _, history = _recent(bundle, user_row, events)
            if history is not None and self.scorer.warm(bundle, user_row, history):
                sent += 1
        self.metrics.fresh_warmed.inc(sent)
        return sent

    def _trending(self, bundle: ServingBundle) -> np.ndarray:
        """The trending item rows of ``bundle`` (mapped once per list and version)."""
        cached, trending = self._trending_rows, self.trending
        if cached is None or cached[0] != bundle.version or cached[1] is not trending:
            rows = bundle.item_rows(list(trending))
            cached = self._trending_rows = (bundle.version, trending, rows[rows > 0])
        return cached[2]

    async def _score(
        self, bundle: ServingBundle, user_row: int, rows: np.ndarray, context: Context
    ) -> ScoredBatch:
        scores = await self.scorer.score(bundle, user_row, rows, context)
        self._features_seconds.observe(scores.features_s)
        self._scoring_seconds.observe(scores.scoring_s)
        return scores

    # --- endpoints: JSON-ready dicts in the schemas' field order (services.gateway.schemas) ---
    async def recall(
        self, bundle: ServingBundle, uid: str, top_k: int, context: Context
    ) -> dict[str, Any]:
        found = await self.candidates(bundle, uid, top_k, context)
        return {
            "uid": uid,
            "stage": "recall",
            "version": bundle.version,
            "count": len(found.rows),
            "is_cold_start": found.is_cold_start,
            "degraded": found.degraded,
            "items": bundle.item_ids[found.rows].tolist(),
        }

    async def recommend(
        self, bundle: ServingBundle, uid: str, top_k: int, context: Context
    ) -> dict[str, Any]:
        n = max(self.settings.rank_candidates, top_k)
        found = await self.candidates(bundle, uid, n, context, score=True)
        items: list[dict[str, Any]] = []
        if len(found.rows):
            scores = found.scores or await self._score(bundle, found.user_row, found.rows, context)
            items = _ranked(bundle, found.rows, scores, top_k)
        return {
            "uid": uid,
            "stage": "rank",
            "is_cold_start": found.is_cold_start,
            "version": bundle.version,
            "degraded": found.degraded,
            "items": items,
            "request_id": request_id(),
        }

    async def rerank(
        self, bundle: ServingBundle, request: RerankRequest, context: Context
    ) -> dict[str, Any]:
        given = np.asarray(request.items, dtype=str)
        _, first = np.unique(given, return_index=True)  # repeats keep their first place
        given = given[np.sort(first)]
        rows = bundle.item_rows(given.tolist())
        known = rows > 0
        user_row = bundle.user_row(request.uid)
        if not user_row:
            self.metrics.cold_starts.inc()
        items: list[dict[str, Any]] = []
        if known.any():
            scores = await self._score(bundle, user_row, rows[known], context)
            items = _ranked(bundle, rows[known], scores, request.top_k or int(known.sum()))
        return {
            "uid": request.uid,
            "stage": "rerank",
            "is_cold_start": not user_row,
            "version": bundle.version,
            "items": items,
            "unknown_items": given[~known].tolist(),
            "request_id": request_id(),
        }


def _recent(
    bundle: ServingBundle, user_row: int, events: list[tuple[str, float]]
) -> tuple[np.ndarray, np.ndarray | None]:
    """A user's recent items (newest first) as rows, and their fresh history when the
    newest is newer than the bundle (else None)."""
    recent = bundle.item_rows([item for item, _ in events])
    recent = recent[recent > 0]
    fresh = events[0][1] > bundle.created_at and len(recent)
    return recent, bundle.fresh_history(user_row, recent) if fresh else None


def request_id() -> str:
    """A new answer's id (64 random bits, hex): events about what it showed may carry it."""
    return secrets.token_hex(8)


def _member(rows: np.ndarray, sorted_rows: np.ndarray) -> np.ndarray:
    """Whether each of ``rows`` is in ``sorted_rows`` (ascending), by binary search."""
    if not len(sorted_rows):
        return np.zeros(len(rows), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_rows, rows), len(sorted_rows) - 1)
    return sorted_rows[at] == rows


def _ranked(
    bundle: ServingBundle, rows: np.ndarray, scores: ScoredBatch, k: int
) -> list[dict[str, Any]]:
    """The best ``k`` rows by score (ties keep recall order) as response items."""
    order = np.argsort(-scores.score, kind="stable")[:k]
    ids = bundle.item_ids[rows[order]].tolist()
    score = scores.score[order].tolist()
    tasks = bundle.tasks
    # one dict per returned item (k ≤ 200), not per candidate
    return [
        {"id": i, "score": s, "scores": dict(zip(tasks, p, strict=True))}
        for i, s, p in zip(ids, score, scores.probs[order].tolist(), strict=True)
    ]
