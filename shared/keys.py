"""The Redis key layout, in one place (ARCHITECTURE.md, "Redis layout").

{prefix}active                       → the version id being served
{prefix}v:{version}:recall:{uid}     ZSET of raw item ids, higher score = earlier
{prefix}v:{version}:global_hot       ZSET of raw item ids scored by hotness
{prefix}v:{version}:meta             HASH (created_at, dataset, counts, models)
{prefix}versions                     ZSET of published versions by publish time
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True)
class Keys:
    prefix: str = "recsys:"

    @property
    def active(self) -> str:
        return f"{self.prefix}active"

    @property
    def versions(self) -> str:
        return f"{self.prefix}versions"

    def version_prefix(self, version: str) -> str:
        return f"{self.prefix}v:{version}:"

    def recall(self, version: str, uid: str) -> str:
        return f"{self.prefix}v:{version}:recall:{uid}"

    def global_hot(self, version: str) -> str:
        return f"{self.prefix}v:{version}:global_hot"

    def meta(self, version: str) -> str:
        return f"{self.prefix}v:{version}:meta"
