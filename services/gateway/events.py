"""Feedback in (``POST /events``), exactly once, and the fresh state it keeps in Redis.

One Lua script writes a whole batch atomically (all of it or, with Redis down, none),
so a retried batch adds nothing. For each event, in order:

- ``SET {prefix}event:{event_id} 1 NX EX events_dedupe_ttl_s``: a new id goes on, a
  repeat (of an earlier batch or of this one) is counted as a duplicate and skipped;
- ``XADD {prefix}events MAXLEN ~ events_stream_max * e <json>``: the log the worker
  ingests (``python -m offline ingest``);
- a positive event (any type but ``impression``) also updates the user's recent items
  ``{prefix}recent:{uid}`` (ZSET item → event time, the newest ``recent_items`` kept,
  expiring ``recent_ttl_s`` after the last) and adds one to the item in the trending
  bucket of its arrival ``{prefix}trending:{now // trending_bucket_s}``.

Trending is read as the buckets of the last ``trending_window_s``, each weighted
``0.5 ** (age / trending_half_life_s)`` (``ZUNION … WEIGHTS``), by :meth:`EventLog.trending`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import orjson
import redis.asyncio as aredis

from services.gateway.schemas import Event
from shared.keys import Keys
from shared.settings import Settings

__all__ = ["IMPRESSION", "EventLog"]

IMPRESSION = "impression"

_RECORD = """
local n = tonumber(ARGV[1])
local accepted, duplicates = 0, 0
for i = 1, n do
  local at = 6 + (i - 1) * 4
  if redis.call('SET', KEYS[1 + 2 * i], '1', 'NX', 'EX', ARGV[2]) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[at])
    if ARGV[at + 3] == '1' then
      local recent = KEYS[2 + 2 * i]
      redis.call('ZADD', recent, ARGV[at + 2], ARGV[at + 1])
      redis.call('ZREMRANGEBYRANK', recent, 0, -(tonumber(ARGV[4]) + 1))
      redis.call('EXPIRE', recent, ARGV[5])
      redis.call('ZINCRBY', KEYS[2], 1, ARGV[at + 1])
      redis.call('EXPIRE', KEYS[2], ARGV[6 + n * 4])
    end
    accepted = accepted + 1
  else
    duplicates = duplicates + 1
  end
end
return {accepted, duplicates}
"""


class EventLog:
    """Writes event batches and reads the trending items.

    Args:
        redis (redis.asyncio.Redis): the online store.
        settings (Settings): the caps, TTLs and the trending buckets.
    """

    def __init__(self, redis: aredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._record = redis.register_script(_RECORD)

    async def record(self, events: Sequence[Event], now: float | None = None) -> tuple[int, int]:
        """Write ``events`` (validated); ``(accepted, duplicates)``.

        Raises:
            redis.exceptions.RedisError, OSError: Redis is unreachable; nothing was written.
        """
        s, k = self.settings, self.keys
        now = time.time() if now is None else now
        keys = [k.events, k.trending(int(now // s.trending_bucket_s))]
        args: list[bytes | str | int | float] = [
            len(events), s.events_dedupe_ttl_s, s.events_stream_max, s.recent_items,
            s.recent_ttl_s,
        ]  # fmt: skip
        for e in events:
            ts = now if e.ts is None else e.ts
            keys += [k.event(e.event_id), k.recent(e.uid)]
            payload = orjson.dumps(e.model_dump(exclude_none=True) | {"ts": ts})
            args += [payload, e.item_id, repr(ts), int(e.type != IMPRESSION)]
        args.append(s.trending_window_s + s.trending_bucket_s)
        accepted, duplicates = await self._record(keys=keys, args=args)
        return int(accepted), int(duplicates)

    async def trending(self, n: int, now: float | None = None) -> list[str]:
        """The ``n`` items with the most decayed positives of the last window, best first."""
        s = self.settings
        now = time.time() if now is None else now
        newest = int(now // s.trending_bucket_s)
        buckets = range(newest, newest - math.ceil(s.trending_window_s / s.trending_bucket_s), -1)
        weights = {
            self.keys.trending(b): 0.5
            ** ((newest - b) * s.trending_bucket_s / s.trending_half_life_s)
            for b in buckets
        }
        ranked = await self.redis.zunion(weights, withscores=True)  # ascending by score
        return [item for item, _ in sorted(ranked, key=lambda p: -p[1])[:n]]
