"""Sorted sets as ``DUMP`` payloads: publish writes each user's list with one ``RESTORE``.

Parsing a ZADD of 200 (score, member) arguments is most of what a server does to take a
list; a ``RESTORE key ttl payload REPLACE`` of the bytes its own ``DUMP`` would give
costs it far less, is one atomic command (no MULTI/EXEC, no DEL, no EXPIRE), and is
built here from fragments prepared once per item and once per rank. A payload is the
value in RDB form, the RDB version (2 bytes) and a CRC-64 (Redis' Jones variant) of
everything before it. Two value forms:

- ``listpack`` (RDB type 17, Redis ≥ 7.0): the compact encoding the server keeps as it
  is when the list fits its ``zset-max-listpack-entries`` / ``-value`` (no parsing, no
  skiplist; about 8× less memory than a skiplist of the same list);
- ``zset2`` (RDB type 5, Redis ≥ 4.0): members and binary scores, from which the server
  builds its skiplist.

``tests/offline/test_dump.py`` checks both against the server's own ``DUMP`` and its
deep payload check (``sanitize-dump-payload yes``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import anycrc
import numpy as np

__all__ = ["SortedSets", "listpack_fits"]

_CRC = anycrc.Model("CRC64-REDIS")
_LISTPACK, _ZSET2 = 17, 5
_RDB_VERSION = {_LISTPACK: 10, _ZSET2: 8}  # the first RDB version with that type


class SortedSets:
    """Payloads of sorted sets whose members come from one table and whose scores are
    given by rank (the j-th member of every set gets ``scores[j]``)."""

    def __init__(self, members: Sequence[bytes], scores: Sequence[float], listpack: bool):
        """Args:
        members: (I,) every member a set may hold, addressed by row.
        scores: (K,) the score at each rank; a set's members are given best rank first.
        listpack: the listpack form (only for servers that keep such sets so), else zset2.
        """
        self.type = _LISTPACK if listpack else _ZSET2
        if listpack:
            self.members = _objects([_listpack_entry(m) for m in members])
            self.scores = _objects([_listpack_entry(_score_text(s)) for s in scores])
        else:
            self.members = _objects([_rdb_string(m) for m in members])
            self.scores = _objects([struct.pack("<d", s) for s in scores])
        self.footer = struct.pack("<H", _RDB_VERSION[self.type])

    def payloads(self, rows: np.ndarray, keep: np.ndarray) -> list[bytes | None]:
        """One payload per set, None for an empty one (a server refuses empty sets).

        Args:
            rows: (B, K) member rows of each set, best rank first.
            keep: (B, K) which of them it holds (a repeated member kept once, by whoever
                marks it: members must be distinct).
        """
        k = rows.shape[1]
        scores = self.scores[:k]
        if self.type == _LISTPACK:  # ascending score order: the worst rank first
            rows, keep, scores = rows[:, ::-1], keep[:, ::-1], scores[::-1]
        pairs = np.empty((*rows.shape, 2), dtype=object)
        pairs[:, :, 0] = self.members[rows]
        pairs[:, :, 1] = scores
        if not keep.all():
            pairs[~keep] = b""
        flat = pairs.reshape(len(rows), 2 * k)
        out: list[bytes | None] = []
        for entries, n in zip(flat, keep.sum(axis=1).tolist(), strict=True):
            if not n:
                out.append(None)
                continue
            body = b"".join(entries)
            if self.type == _LISTPACK:
                blob = struct.pack("<IH", len(body) + 7, min(2 * n, 65535)) + body + b"\xff"
                value = bytes([_LISTPACK]) + _rdb_string(blob)
            else:
                value = bytes([_ZSET2]) + _rdb_length(n) + body
            value += self.footer
            out.append(value + struct.pack("<Q", _CRC.calc(value)))
        return out


def listpack_fits(members: int, longest: int) -> bool:
    """Whether this module can write a listpack of ``members`` members of at most
    ``longest`` bytes (the server's own limits are checked by the caller)."""
    return 2 * members < 65535 and longest < 4096


def _objects(values: list[bytes]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _score_text(score: float) -> bytes:
    return b"%d" % score if float(score).is_integer() else repr(float(score)).encode()


def _rdb_length(n: int) -> bytes:
    if n < 64:
        return bytes([n])
    if n < 16384:
        return bytes([0x40 | n >> 8, n & 0xFF])
    return b"\x80" + struct.pack(">I", n)


def _rdb_string(value: bytes) -> bytes:
    return _rdb_length(len(value)) + value


def _listpack_entry(value: bytes) -> bytes:
    """A listpack string entry: encoding and data, then their length backwards."""
    n = len(value)
    if n < 64:
        head = bytes([0x80 | n])
    elif n < 4096:
        head = bytes([0xE0 | n >> 8, n & 0xFF])
    else:
        raise ValueError(f"listpack members here are under 4096 bytes, got {n}")
    size = len(head) + n
    back = bytes([size]) if size < 128 else bytes([size >> 7, (size & 127) | 128])
    return head + value + back
