"""The gateway's served state: the Redis pool, the model thread, the bundle, hot reload.

Hot reload: a background task reads ``recsys:active`` every ``reload_interval_s``. When
it names another version, the bundle is loaded in a worker thread
(``asyncio.to_thread``) while the current one keeps serving, then swapped in with one
reference assignment; a request holds the bundle it started with to the end, so a
swap never mixes versions inside a request. A version must prove itself first (every
file's hash, finite weights, its probe set reproduced: :mod:`shared.probes`); one that
fails leaves the old one serving, shows as ``bundle: "stale: …"`` in ``/health``,
counts in ``recsys_bundle_load_failures_total{reason}`` and is retried with
exponential backoff. The same poller refreshes the trending items cold users' recall
blends in (:meth:`~services.gateway.events.EventLog.trending`).

At start-up with Redis unreachable, empty, or naming a version that fails, the latest
version on disk that was once published is served, flagged, until Redis names one that
loads (a bundle still being written is never picked).

Three views of the state: alive (the process answers), ready (a verified bundle is
served and no drain has begun; Redis down is still ready, flagged) and healthy (every
dependency as it is: :meth:`Runtime.health`). Public texts name the failing part and
the class of problem; paths and addresses go to the log only.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError  # noqa: A004  (redis', not the builtin)

from services.gateway.bundle import ServingBundle
from services.gateway.events import EventLog
from services.gateway.metrics import Metrics
from services.gateway.recommender import Clock, Recommender, utc_now
from services.gateway.schemas import HealthResponse, ReadyResponse
from services.gateway.scorer import Scorer, ScoringProcess
from shared.bundle import Bundle
from shared.errors import BundleError
from shared.keys import Keys
from shared.settings import Settings
from shared.store import connect_async

__all__ = ["Runtime"]

log = logging.getLogger(__name__)

_MAX_RETRY_S = 60.0


class Runtime:
    """Everything one gateway process holds; built and closed by the app's lifespan."""

    def __init__(self, settings: Settings, metrics: Metrics, clock: Clock = utc_now) -> None:
        self.settings = settings
        self.metrics = metrics
        self.keys = Keys(settings.key_prefix)
        timeout = settings.redis_timeout_s
        # short timeouts; one immediate retry of a connection found broken (a pooled one
        # that died with a restarted server reconnects), never of a timeout: a stalled
        # call waits one timeout in all. Never the client's exponential backoff.
        # (asyncio.timeout around each call costs ~15 % of /recall's request rate.)
        self.redis = connect_async(
            settings.redis_url,
            settings.redis_cluster,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
            decode_responses=True,
        )
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="recsys-model")
        self.process = (
            ScoringProcess(settings.artifacts_dir, settings.ranker, settings.model_runtime)
            if settings.scorer == "process"
            else None
        )
        self.scorer = Scorer(self.process, metrics, self.executor)
        self.recommender = Recommender(settings, self.redis, self.scorer, metrics, clock)
        self.events = EventLog(self.redis, settings)
        self.bundle_error: str | None = None  # public: no paths, no addresses
        self.redis_answered = False  # at the last sync
        self.draining = False
        self._bundle: ServingBundle | None = None
        self._failed: dict[str, tuple[int, float]] = {}  # version → (attempts, retry at)
        self._sync_lock = asyncio.Lock()
        self._reloader: asyncio.Task[None] | None = None
        self._closing = False

    def start_drain(self) -> None:
        """From now on ``/readyz`` answers 503; requests are still served."""
        self.draining = True

    # --- the served bundle ------------------------------------------------------------
    @property
    def bundle(self) -> ServingBundle | None:
        return self._bundle

    def require_bundle(self) -> ServingBundle:
        """The bundle being served, or a BundleError (503) saying why there is none."""
        bundle = self._bundle
        if bundle is None:
            raise BundleError(f"no bundle loaded yet ({self.bundle_error or 'starting'})")
        return bundle

    def swap(self, bundle: ServingBundle) -> None:
        """Serve ``bundle`` from the next request on (one reference assignment)."""
        self._bundle = bundle
        self.bundle_error = None
        self._failed.pop(bundle.version, None)
        self.metrics.serve_version(bundle.version)
        log.info("serving bundle %s", bundle.version)
        # what the process holds for good (the bundle, torch, the libraries) leaves the
        # cyclic collector's view: its full passes over them cost 50–100 ms pauses under
        # load. Unfreezing first lets the swapped-out bundle's cycles be collected.
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        if not self.settings.api_key_set:
            log.warning("RECSYS_API_KEYS is empty: /rerank and /events take requests from anyone")
        if self.process is not None:
            await self.process.start()
        await self.sync()
        if self._bundle is None:  # Redis down, empty, or naming a version that failed
            await self._load_latest()
        self._reloader = asyncio.create_task(self._reload_forever(), name="recsys-reloader")

    async def aclose(self) -> None:
        self._closing = True
        if self._reloader is not None:
            # the flag as well as the cancel: a cancel delivered inside a Redis call can be
            # swallowed by the client, and the poller would then run on
            self._reloader.cancel()
            await asyncio.wait({self._reloader}, timeout=5)
        await self.redis.aclose()
        if self.process is not None:
            await self.process.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _reload_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                await self.sync()
            except Exception:  # the poller must outlive any surprise
                log.exception("checking the active version failed")
                self.metrics.errors.labels("reload").inc()

    # --- reload ---------------------------------------------------------------------------
    async def sync(self) -> bool:
        """Load and serve the active version if it is not the one being served.

        Returns:
            bool: whether Redis answered.
        """
        async with self._sync_lock:
            try:
                active = await self.redis.get(self.keys.active)
            except (RedisError, OSError) as e:
                self.redis_answered = False
                if self._bundle is None:
                    self.bundle_error = f"redis unreachable ({type(e).__name__})"
                return False
            self.redis_answered = True
            await self._refresh_trending()
            current = self._bundle
            self.recommender.store_empty = active is None  # answers say degraded
            if active is None:
                if current is None:
                    self.bundle_error = "no active version in Redis to load"
                elif self.bundle_error and self.bundle_error.startswith("redis unreachable"):
                    self.bundle_error = None  # Redis answers again; it just names nothing
                return True
            if current is not None and active == current.version:
                self.bundle_error = None
                return True
            attempts, retry_at = self._failed.get(active, (0, 0.0))
            if time.monotonic() >= retry_at:
                await self._load(active, attempts)
            return True

    async def _refresh_trending(self) -> None:
        """What cold users' recall blends in: trending now (a failure keeps the last list)."""
        if self.settings.trending_weight <= 0:
            return
        try:
            trending = await self.events.trending(self.settings.rank_candidates)
        except (RedisError, OSError) as e:
            log.warning("trending not refreshed (the last list stays): %s", e)
            return
        self.recommender.trending = tuple(trending)

    async def _load(self, version: str, attempts: int = 0) -> bool:
        # the scoring process loads the same version meanwhile; it must hold it before the
        # swap, or the new version's requests would all be scored inline
        prepared = (
            asyncio.create_task(self.process.load(version)) if self.process is not None else None
        )
        try:
            bundle = await asyncio.to_thread(
                ServingBundle.load,
                self.settings.artifacts_dir,
                version,
                self.settings.ranker,
                self.settings.model_runtime,
            )
        except BundleError as e:
            if prepared is not None:
                prepared.cancel()
            attempts += 1
            delay = min(_MAX_RETRY_S, self.settings.reload_interval_s * 2**attempts)
            self._failed[version] = (attempts, time.monotonic() + delay)
            self.bundle_error = f"version {version} refused ({e.reason})"
            self.metrics.bundle_load_failures.labels(e.reason).inc()
            self.metrics.errors.labels("bundle").inc()
            log.error("version %s refused: %s; retrying in %.0f s", version, e, delay)
            return False
        if prepared is not None:
            try:
                await prepared
            except Exception as e:  # scored inline meanwhile; counted, logged, in /health
                self.metrics.errors.labels("scorer").inc()
                log.error("the scoring process could not load %s (%s): scoring inline", version, e)
        self.swap(bundle)
        return True

    async def _load_latest(self) -> None:
        """Serve the latest published version on disk that proves itself (3 tries at most)."""
        why = self.bundle_error
        candidates = [
            b.version
            for b in Bundle.published(self.settings.artifacts_dir)
            if b.version not in self._failed
        ]
        if not candidates:
            log.warning("%s, and no published bundle on disk to serve meanwhile", why)
        for version in candidates[:3]:
            log.warning("%s at start-up: serving %s, published before, from disk", why, version)
            if await self._load(version):
                self.bundle_error = why  # not the version Redis names: say so in /health
                return

    # --- health ------------------------------------------------------------------------------
    @property
    def store_note(self) -> str | None:
        """Redis answers but names no active version (restarted empty), or None."""
        if self.recommender.store_empty:
            return f"no active version ({self.keys.active} is unset)"
        return None

    @property
    def ready(self) -> bool:
        """A verified bundle is served and no drain has begun (Redis may be down)."""
        return self._bundle is not None and not self.draining

    def readiness(self) -> ReadyResponse:
        """What ``/readyz`` says, from the state the poller keeps (no Redis call)."""
        bundle = self._bundle
        reason = (
            "draining" if self.draining
            else None if bundle is not None
            else f"no bundle: {self.bundle_error or 'starting'}"
        )  # fmt: skip
        degraded = not self.redis_answered or bool(self.store_note or self.bundle_error)
        return ReadyResponse(
            ready=self.ready,
            version=bundle.version if bundle else None,
            degraded=degraded,
            reason=reason,
        )

    async def health(self) -> HealthResponse:
        """Each dependency's state.

        ``status``: ``ok``; ``degraded`` while requests are answered with a part down or
        stale (Redis unreachable or without an active version, an older bundle, inline
        scoring); ``unavailable`` without a bundle (every recommendation is a 503).
        """
        deps: dict[str, str] = {}
        try:
            await self.redis.ping()
            deps["redis"] = f"stale: {self.store_note}" if self.store_note else "ok"
        except (RedisError, OSError) as e:
            deps["redis"] = f"down: {type(e).__name__}"
        bundle = self._bundle
        if bundle is None:
            deps["bundle"] = f"missing: {self.bundle_error or 'starting'}"
        elif self.bundle_error:
            deps["bundle"] = f"stale: {self.bundle_error}"
        else:
            deps["bundle"] = "ok"
        if self.process is not None:  # never failing: without it requests are scored inline
            serving = bundle is not None and self.process.holds(bundle.version)
            deps["scorer"] = "ok" if serving else "inline: the scoring process is not ready"
        failing = [name for name, state in deps.items() if state != "ok"]
        status = "unavailable" if bundle is None else "degraded" if failing else "ok"
        return HealthResponse(
            status=status,
            ready=self.ready,
            draining=self.draining,
            version=bundle.version if bundle else None,
            dependencies=deps,
            failing=failing,
        )
