"""Feedback in (``POST /events``), exactly once, and the fresh state it keeps in Redis.

One Lua script writes a whole batch atomically (all of it or, with Redis down, none),
so a retried batch adds nothing. For each event, in order:

- ``SET {prefix}event:{event_id} 1 NX EX events_dedupe_ttl_s``: a new id goes on, a
  repeat (of an earlier batch or of this one) is counted as a duplicate and skipped;
- ``XADD {prefix}events MAXLEN ~ events_stream_max * e <json>``: the log the worker
  ingests (``python -m offline ingest``);
- a positive event (any type but ``impression``) on an item the served bundle knows
  also updates the user's recent items ``{prefix}recent:{uid}`` (ZSET item → arrival
  time: a client's clock decides nothing, the newest ``recent_items`` kept, expiring
  ``recent_ttl_s`` after the last) and adds one to the item in the trending bucket of its
  arrival ``{prefix}trending:{now // trending_bucket_s}``.

Trending is read as the buckets of the last ``trending_window_s``, each weighted
``0.5 ** (age / trending_half_life_s)``, summed and cut to the top ``n`` inside Redis
(``ZUNIONSTORE … WEIGHTS`` into a scratch key, ``ZREVRANGE``), by :meth:`EventLog.trending`.
An ``event_id`` is global: clients make them unique (UUIDs), not per user or session.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import redis.asyncio as aredis

from services.gateway.schemas import Event
from shared.keys import Keys
from shared.settings import Settings

__all__ = ["IMPRESSION", "RECENT_RETURNED", "EventLog", "Recorded"]

IMPRESSION = "impression"
RECENT_RETURNED = 100  # users of a batch whose recent items the script returns (warm-ups)


@dataclass(frozen=True)
class Recorded:
    accepted: int
    duplicates: int
    # the recent items (newest first, with arrival times) of up to RECENT_RETURNED users
    # the batch gave new positive events, as the next request of theirs will read them
    recent: dict[str, list[tuple[str, float]]]


_RECORD = """
local n = tonumber(ARGV[1])
local accepted, duplicates, touched, users = 0, 0, {}, 0
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
      if not touched[recent] and users < tonumber(ARGV[7 + n * 4]) then
        touched[recent], users = i, users + 1
      end
    end
    accepted = accepted + 1
  else
    duplicates = duplicates + 1
  end
end
local recent = {}
for key, i in pairs(touched) do
  recent[#recent + 1] = i
  recent[#recent + 1] = redis.call('ZREVRANGE', key, 0, -1, 'WITHSCORES')
end
return {accepted, duplicates, recent}
"""
_TRENDING = """
local scratch = KEYS[#KEYS]
local call = {'ZUNIONSTORE', scratch, #KEYS - 1}
for i = 1, #KEYS - 1 do call[#call + 1] = KEYS[i] end
call[#call + 1] = 'WEIGHTS'
for i = 2, #ARGV do call[#call + 1] = ARGV[i] end
redis.call(unpack(call))
local top = redis.call('ZREVRANGE', scratch, 0, tonumber(ARGV[1]) - 1)
redis.call('DEL', scratch)
return top
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
        self._trending = redis.register_script(_TRENDING)

    async def record(
        self, events: Sequence[Event], known: Sequence[bool], now: float | None = None
    ) -> Recorded:
        """Write ``events`` (validated; ``known``: whether the bundle knows each one's
        item).

        Raises:
            redis.exceptions.RedisError, OSError: Redis is unreachable or did not answer
                in time: the batch was written whole or not at all (a retry is safe).
        """
        s, k = self.settings, self.keys
        now = time.time() if now is None else now
        keys = [k.events, k.trending(int(now // s.trending_bucket_s))]
        args: list[bytes | str | int | float] = [
            len(events), s.events_dedupe_ttl_s, s.events_stream_max, s.recent_items,
            s.recent_ttl_s,
        ]  # fmt: skip
        for e, item_known in zip(events, known, strict=True):
            keys += [k.event(e.event_id), k.recent(e.uid)]
            payload = orjson.dumps(e.model_dump(exclude_none=True) | {"ts": e.ts or now})
            args += [payload, e.item_id, repr(now), int(item_known and e.type != IMPRESSION)]
        args += [s.trending_window_s + s.trending_bucket_s, RECENT_RETURNED]
        accepted, duplicates, flat = await self._record(keys=keys, args=args)
        recent = {
            events[int(i) - 1].uid: list(zip(pairs[::2], map(float, pairs[1::2]), strict=True))
            for i, pairs in zip(flat[::2], flat[1::2], strict=True)
        }
        return Recorded(int(accepted), int(duplicates), recent)

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
        scratch = self.keys.trending(-secrets.randbelow(1 << 62))  # no bucket has this number
        return await self._trending(keys=[*weights, scratch], args=[n, *weights.values()])
