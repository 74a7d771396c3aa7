"""The Redis key layout, in one place (docs/architecture.md, "Redis layout").

{prefix}active                       → the version id being served
{prefix}v:{version}:recall:{uid}     ZSET of raw item ids, higher score = earlier
{prefix}v:{version}:global_hot       ZSET of raw item ids scored by hotness
{prefix}v:{version}:meta             HASH (created_at, dataset, counts, models)
{prefix}versions                     ZSET of published versions by publish time
{prefix}pending                      ZSET of versions being written, by start time
{prefix}{feedback}:events             STREAM of accepted feedback events (capped), one JSON field "e"
{prefix}{feedback}:event:{event_id}   STRING, set once per accepted event_id (TTL): the dedupe
{prefix}{feedback}:recent:{uid}       ZSET of the user's recent positive item ids by event time (capped, TTL)
{prefix}{feedback}:trending:{bucket}  ZSET of item ids by positives that arrived in the time bucket (TTL)

On a Redis Cluster a key's slot is the hash of its braced part when it has one: the
feedback keys carry the hash tag ``{feedback}``, so that the one script that writes an
event batch (and the one that sums the trending buckets) touches a single slot. Every
other key is written alone (a version's lists spread over the nodes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Keys", "glob_escape"]


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern (SCAN MATCH, KEYS)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


@dataclass(frozen=True)
class Keys:
    prefix: str = "recsys:"

    @property
    def active(self) -> str:
        return f"{self.prefix}active"

    @property
    def versions(self) -> str:
        return f"{self.prefix}versions"

    @property
    def pending(self) -> str:
        return f"{self.prefix}pending"

    def version_prefix(self, version: str) -> str:
        return f"{self.prefix}v:{version}:"

    def version_pattern(self, version: str) -> str:
        """SCAN MATCH pattern of every key of ``version`` (and of no other version)."""
        return glob_escape(self.version_prefix(version)) + "*"

    def recall(self, version: str, uid: str) -> str:
        return f"{self.prefix}v:{version}:recall:{uid}"

    def global_hot(self, version: str) -> str:
        return f"{self.prefix}v:{version}:global_hot"

    def meta(self, version: str) -> str:
        return f"{self.prefix}v:{version}:meta"

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"key prefix {self.prefix!r}: no braces (they are hash tags)")

    @property
    def feedback(self) -> str:
        """The start of every feedback key: one hash slot on a cluster."""
        return f"{self.prefix}{{feedback}}:"

    @property
    def events(self) -> str:
        return f"{self.feedback}events"

    def event(self, event_id: str) -> str:
        return f"{self.feedback}event:{event_id}"

    def recent(self, uid: str) -> str:
        return f"{self.feedback}recent:{uid}"

    def trending(self, bucket: int) -> str:
        return f"{self.feedback}trending:{bucket}"
