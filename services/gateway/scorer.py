"""Scoring one request's candidates: in a scoring process, or inline on the event loop.

The ranker's head is ~65k multiply-adds per candidate (0.2 ms for 100 on one core,
at the core's peak), so where it runs decides the gateway's throughput. A thread
does not help: Python threads share one interpreter lock, and an onnxruntime call
from a thread next to a busy event loop waits for the lock each time (measured:
5.6 ms per 0.19 ms call at the default switch interval). So with ``RECSYS_SCORER=process``
(the default) every gateway worker has a scoring process of its own
(:class:`ScoringProcess`) that loads the same bundle versions (their large arrays
are memory-mapped, shared through the page cache) and computes on another core,
while the event loop handles requests. A request sends ``(user row, item rows,
context)`` and gets ``(scores, probabilities)`` back over a socket pair: about
2 KB each way, no feature arrays.

A scoring process that dies, or has not loaded the served version yet, never fails
a request: it is scored inline (``recsys_fallbacks_total{reason="inline_scoring"}``)
and the process is restarted.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import itertools
import logging
import multiprocessing
import pickle
import select
import signal
import socket
import struct
import threading
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from services.gateway.bundle import ModelRuntime, ScoredBatch, ServingBundle
from services.gateway.metrics import Metrics
from shared.errors import RecsysError
from shared.features import Context

__all__ = ["Scorer", "ScoringProcess", "ScoringUnavailable"]

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!I")
_LOAD_TIMEOUT_S = 300.0
_RESTART_DELAY_S = 1.0
_KEEP_VERSIONS = 2  # the served one and the one being swapped in
_WARMING_MAX = 1024  # warm-ups queued in the scoring process (it runs them when idle)


class ScoringUnavailable(RecsysError):
    """The scoring process cannot answer (dead, restarting, or without that version)."""


# --- the child -----------------------------------------------------------------------------
def _frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def _unframe(buffer: bytearray) -> list[Any]:
    """Every complete message at the start of ``buffer``, removed from it."""
    messages, at = [], 0
    while len(buffer) - at >= _HEADER.size:
        (n,) = _HEADER.unpack_from(buffer, at)
        if len(buffer) - at - _HEADER.size < n:
            break
        messages.append(pickle.loads(buffer[at + _HEADER.size : at + _HEADER.size + n]))
        at += _HEADER.size + n
    del buffer[:at]
    return messages


def _child(sock: socket.socket, artifacts: str, ranker: str, runtime: ModelRuntime) -> None:
    """The scoring process: load versions when told, score requests, until EOF.

    A version loads on a thread of its own, so the served version keeps being scored
    meanwhile (a swap costs no latency); each reply goes out as soon as it is ready.
    Arrays travel as raw bytes (float32 scores, int64 item rows): no pickled arrays.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C stops the parent, which stops us
    import torch  # noqa: PLC0415  (the child's own interpreter)

    torch.set_num_threads(1)
    bundles: dict[str, ServingBundle] = {}
    lock = threading.Lock()  # one frame at a time on the socket

    def send(message: Any) -> None:
        frame = _frame(message)
        with lock:
            sock.sendall(frame)

    def load(key: int, version: str) -> None:
        try:
            if version not in bundles:
                bundles[version] = ServingBundle.load(Path(artifacts), version, ranker, runtime)
                for old in list(bundles)[:-_KEEP_VERSIONS]:
                    del bundles[old]
                gc.unfreeze()  # as the gateway does at a swap (Runtime.swap)
                gc.collect()
                gc.freeze()
            send((key, "ok", None))
        except Exception as e:
            send((key, "error", f"{type(e).__name__}: {e}"))

    buffer = bytearray()
    warms: collections.deque[tuple[int, str, int, bytes]] = collections.deque()
    while True:
        # a warm-up runs only while no request waits: it never delays one by more than
        # the one warm-up already running
        if warms and not select.select([sock], [], [], 0)[0]:
            key, version, user_row, history = warms.popleft()
            try:
                bundles[version].user_vector(user_row, _array(history))
                send((key, "ok", None))
            except Exception as e:
                send((key, "error", f"{type(e).__name__}: {e}"))
            continue
        # 64 KiB: a larger buffer is mmap-ed and unmapped by malloc at every recv
        # (measured: 15 % of the scoring path's CPU at 1 MiB)
        if not (chunk := sock.recv(1 << 16)):
            break
        buffer += chunk
        for key, kind, *args in _unframe(buffer):
            if kind == "load":
                threading.Thread(target=load, args=(key, *args), daemon=True).start()
                continue
            if kind == "warm":
                warms.append((key, *args))
                continue
            try:
                if kind == "search":
                    version, user_row, k = args
                    found = bundles[version].search(user_row, k)
                    send((key, "ok", found.tobytes()))
                    continue
                if kind == "fresh":
                    version, user_row, history, seen, n, context, score = args
                    rows, s = bundles[version].fresh(
                        user_row, _array(history), _array(seen), n, Context(*context), score
                    )
                    send((key, "ok", (rows.tobytes(), None if s is None else _packed(s))))
                    continue
                version, user_row, items, context = args
                rows = np.frombuffer(items, dtype=np.int64)
                scored = bundles[version].score(user_row, rows, Context(*context))
                send((key, "ok", _packed(scored)))
            except Exception as e:  # one bad request must not end the process
                send((key, "error", f"{type(e).__name__}: {e}"))


def _packed(s: ScoredBatch) -> tuple[bytes, bytes, float]:
    return s.score.tobytes(), s.probs.tobytes(), s.features_s


def _unpacked(packed: tuple[bytes, bytes, float], started: float) -> ScoredBatch:
    """A :func:`_packed` reply; the head's share is the round trip less the gathering."""
    score, probs, features_s = packed
    score_ = np.frombuffer(score, dtype=np.float32)
    probs_ = np.frombuffer(probs, dtype=np.float32).reshape(len(score_), -1)
    return ScoredBatch(score_, probs_, features_s, time.perf_counter() - started - features_s)


def _bytes(array: np.ndarray | None) -> bytes | None:
    return None if array is None else np.ascontiguousarray(array, dtype=np.int64).tobytes()


def _array(data: bytes | None) -> np.ndarray | None:
    return None if data is None else np.frombuffer(data, dtype=np.int64).copy()


# --- the parent's side -----------------------------------------------------------------------
class _Link(asyncio.Protocol):
    """Frames over the socket pair; each reply resolves the future of its request key."""

    def __init__(self, pending: dict[int, asyncio.Future[Any]], lost: asyncio.Future[None]) -> None:
        self.pending = pending
        self.lost = lost
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for key, status, value in _unframe(self.buffer):
            future = self.pending.pop(key, None)
            if future is not None and not future.done():
                if status == "ok":
                    future.set_result(value)
                else:
                    future.set_exception(ScoringUnavailable(f"scoring process: {value}"))

    def connection_lost(self, exc: Exception | None) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ScoringUnavailable("the scoring process went away"))
        self.pending.clear()
        if not self.lost.done():
            self.lost.set_result(None)


class ScoringProcess:
    """A child process that scores for this gateway worker; see the module docstring.

    Args:
        artifacts (Path): the bundles folder.
        ranker (str): the served ranker kind.
        runtime (ModelRuntime): what runs the head in the child.
    """

    def __init__(self, artifacts: Path, ranker: str, runtime: ModelRuntime) -> None:
        self.artifacts, self.ranker, self.runtime = artifacts, ranker, runtime
        self.process: multiprocessing.process.BaseProcess | None = None
        self._link: _Link | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._keys = itertools.count()
        self._loaded: list[str] = []  # versions the child holds, oldest first
        self._wanted: str | None = None  # the version to (re)load
        self._closing = False
        self._watcher: asyncio.Task[None] | None = None
        self.restarts = 0
        self.warming = 0  # warm-ups sent, not done

    async def start(self) -> None:
        parent, child = socket.socketpair()
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(
            target=_child,
            args=(child, str(self.artifacts), self.ranker, self.runtime),
            name="recsys-scorer",
            daemon=True,
        )
        await asyncio.to_thread(self.process.start)  # spawning takes a moment
        child.close()
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()
        self._pending = {}
        self._loaded = []
        _, self._link = await loop.create_unix_connection(
            lambda: _Link(self._pending, lost), sock=parent
        )
        self._watcher = asyncio.create_task(self._watch(lost), name="recsys-scorer-watch")
        if self._wanted is not None:
            await self.load(self._wanted)

    async def _watch(self, lost: asyncio.Future[None]) -> None:
        await lost
        if self._closing:
            return
        code = self.process.exitcode if self.process is not None else None
        log.error("the scoring process stopped (exit code %s): scoring inline, restarting", code)
        self._link = None
        while not self._closing:
            await asyncio.sleep(_RESTART_DELAY_S)
            try:
                self.restarts += 1
                await self.start()
                log.warning("the scoring process is back")
                return
            except Exception:
                log.exception("restarting the scoring process failed")

    def _request(self, *message: Any) -> asyncio.Future[Any]:
        link = self._link
        if link is None or link.transport is None or link.transport.is_closing():
            raise ScoringUnavailable("no scoring process")
        key = next(self._keys)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        link.transport.write(_frame((key, *message)))
        return future

    async def load(self, version: str) -> None:
        """Have the child load ``version`` (it keeps the newest two).

        Raises:
            ScoringUnavailable: the child is gone or could not load it.
        """
        self._wanted = version
        await asyncio.wait_for(self._request("load", version), _LOAD_TIMEOUT_S)
        self._loaded = [*(v for v in self._loaded if v != version), version][-_KEEP_VERSIONS:]

    def holds(self, version: str) -> bool:
        return self._link is not None and version in self._loaded

    async def score(
        self, version: str, user_row: int, items: np.ndarray, context: Context
    ) -> ScoredBatch:
        started = time.perf_counter()
        packed = await self._request("score", version, user_row, _bytes(items), tuple(context))
        return _unpacked(packed, started)

    async def search(self, version: str, user_row: int, k: int) -> np.ndarray:
        found = await self._request("search", version, user_row, k)
        return np.frombuffer(found, dtype=np.int64)

    async def fresh(
        self, version: str, user_row: int, history: np.ndarray, seen: np.ndarray, n: int,
        context: Context, score: bool,
    ) -> tuple[np.ndarray, ScoredBatch | None]:  # fmt: skip
        started = time.perf_counter()
        rows, scored = await self._request(
            "fresh", version, user_row, _bytes(history), _bytes(seen), n, tuple(context), score
        )
        rows = np.frombuffer(rows, dtype=np.int64)
        return rows, None if scored is None else _unpacked(scored, started)

    def warm(self, version: str, user_row: int, history: np.ndarray) -> None:
        """Have the child compute a fresh user's side when idle (nothing waits for it)."""
        future = self._request("warm", version, user_row, _bytes(history))
        self.warming += 1

        def done(f: asyncio.Future[Any]) -> None:
            self.warming -= 1
            if not f.cancelled():
                f.exception()  # retrieved: a failed warm-up is no one's error

        future.add_done_callback(done)

    async def aclose(self) -> None:
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self._link is not None and self._link.transport is not None:
            self._link.transport.close()
        if self.process is not None and self.process.pid is not None:
            await asyncio.to_thread(self.process.join, 5)
            if self.process.is_alive():
                self.process.kill()


class Scorer:
    """Scores a user's items and searches the index for a user, in the scoring process when
    it holds the version, else inline (a search on the model thread).

    Args:
        process (ScoringProcess | None): the scoring process, or None to always score inline.
        metrics (Metrics): counts inline fallbacks.
        executor (Executor): the model thread, for inline searches.
    """

    def __init__(
        self, process: ScoringProcess | None, metrics: Metrics, executor: Executor
    ) -> None:
        self.process = process
        self.executor = executor
        self._fallbacks = metrics.fallbacks.labels("inline_scoring")

    def _process(self, bundle: ServingBundle) -> ScoringProcess | None:
        """The scoring process if it can answer for ``bundle``; counts the fallback if not."""
        process = self.process
        if process is None:
            return None
        if process.holds(bundle.version):
            return process
        self._fallbacks.inc()
        return None

    async def score(
        self, bundle: ServingBundle, user_row: int, items: np.ndarray, context: Context
    ) -> ScoredBatch:
        if (process := self._process(bundle)) is not None:
            try:
                return await process.score(bundle.version, user_row, items, context)
            except ScoringUnavailable as e:
                log.debug("scoring inline: %s", e)
                self._fallbacks.inc()
        return bundle.score(user_row, items, context)

    async def fresh(
        self, bundle: ServingBundle, user_row: int, history: np.ndarray, seen: np.ndarray,
        n: int, context: Context, score: bool,
    ) -> tuple[np.ndarray, ScoredBatch | None]:  # fmt: skip
        """:meth:`ServingBundle.fresh`, off the event loop (one trip to the scoring process)."""
        args = (user_row, history, seen, n, context, score)
        if (process := self._process(bundle)) is not None:
            try:
                return await process.fresh(bundle.version, *args)
            except ScoringUnavailable as e:
                log.debug("fresh recall inline: %s", e)
                self._fallbacks.inc()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, bundle.fresh, *args)

    def can_warm(self, bundle: ServingBundle) -> bool:
        """The scoring process holds ``bundle`` and has room for a warm-up (a courtesy)."""
        process = self.process
        return (
            process is not None and process.holds(bundle.version) and process.warming < _WARMING_MAX
        )

    def warm(self, bundle: ServingBundle, user_row: int, history: np.ndarray) -> bool:
        """:meth:`ServingBundle.user_vector` of a fresh history in the scoring process, so
        that the user's next request finds it computed; dropped (False) if it cannot."""
        if not self.can_warm(bundle):
            return False
        try:
            self.process.warm(bundle.version, user_row, history)  # type: ignore[union-attr]
        except ScoringUnavailable:
            return False
        return True

    async def search(self, bundle: ServingBundle, user_row: int, k: int) -> np.ndarray:
        """:meth:`ServingBundle.search`, off the event loop."""
        if (process := self._process(bundle)) is not None:
            try:
                return await process.search(bundle.version, user_row, k)
            except ScoringUnavailable as e:
                log.debug("searching inline: %s", e)
                self._fallbacks.inc()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, bundle.search, user_row, k)
