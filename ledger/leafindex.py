"""Finding an RFC 9162 log entry by its leaf hash (RFC 9162 §2.1.1 ``MTH`` leaf hashes).

The log keeps every leaf hash in memory, packed in ``MemoryTree.levels[0]``, so the entry
hash -> index map is derived from them rather than stored: a sorted array of the first 8 bytes
of every leaf hash (as an integer) beside the index each came from, plus a small dict for the
most recent entries (the tail), folded into the arrays every few tens of thousands of entries.

Why not an index in SQLite: its keys are random, so every batch dirtied, and wrote to the
write-ahead log, nearly every page of a large B-tree (half the append throughput at 1M
entries); and why not a Python ``set``: 70 MB at 1M entries against 16 MB here. Being derived
data, it costs no durability: it is rebuilt from the leaf hashes when the log opens.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import isqrt

import numpy as np

KEY = np.dtype(">i8")  # the first 8 bytes of a leaf hash, big-endian
MIN_FOLD = 65536


def fold_threshold(size: int) -> int:
    """How many entries the tail may hold before it is folded into the sorted arrays.

    A fold copies the arrays (cost grows with the log); the tail costs a dict entry each.
    Growing with the square root of the size keeps both modest.
    """
    return max(MIN_FOLD, isqrt(size << 12))


class LeafIndex:
    """Leaf hash -> entry index over packed leaf hashes of ``hash_size`` bytes each.

    ``packed`` is the caller's buffer (the tree's level 0): it is read, never written, and
    must hold the leaves of every index given to :meth:`add`.
    """

    def __init__(self, packed: bytearray, hash_size: int) -> None:
        if hash_size % 8:
            raise ValueError("leaf hashes must be a whole number of 8-byte words")
        self._packed = packed
        self._n = hash_size
        self._keys = np.empty(0, dtype=np.int64)  # sorted
        self._order = np.empty(0, dtype=np.int64)  # entry index of each key
        self._folded = 0  # entries [0, folded) are in the arrays, the rest in the tail
        self._tail: dict[bytes, int] = {}

    def _key_array(self, start: int, end: int) -> np.ndarray:
        words = np.frombuffer(self._packed, dtype=KEY, count=(end - start) * self._n // 8,
                              offset=start * self._n)
        return words[:: self._n // 8].astype(np.int64)

    def _leaf(self, index: int) -> bytes:
        return bytes(self._packed[index * self._n : (index + 1) * self._n])

    def rebuild(self, size: int) -> None:
        """Index the first ``size`` packed leaves (when the log opens)."""
        keys = self._key_array(0, size)
        self._order = np.argsort(keys, kind="stable")
        self._keys = keys[self._order]
        self._folded, self._tail = size, {}

    def add(self, leaves: Sequence[bytes], start: int) -> None:
        """Record leaves ``start, start + 1, ...`` (already in the packed buffer)."""
        self._tail.update(zip(leaves, range(start, start + len(leaves)), strict=True))
        end = start + len(leaves)
        if len(self._tail) >= fold_threshold(end):
            self._fold(end)

    def _fold(self, end: int) -> None:
        keys = self._key_array(self._folded, end)
        order = np.argsort(keys, kind="stable")
        where = np.searchsorted(self._keys, keys[order], side="right")
        self._keys = np.insert(self._keys, where, keys[order])
        self._order = np.insert(self._order, where, order + self._folded)
        self._folded, self._tail = end, {}

    def truncate(self, size: int) -> None:
        """Forget every entry from ``size`` on (an append whose commit failed)."""
        if size < self._folded:
            self.rebuild(size)
        else:
            self._tail = {h: i for h, i in self._tail.items() if i < size}

    def find(self, leaf_hash: bytes) -> int | None:
        """The index of the entry with this leaf hash, or None."""
        if len(leaf_hash) != self._n:
            return None
        return self.find_many([leaf_hash]).get(leaf_hash)

    def find_many(self, leaves: Sequence[bytes]) -> dict[bytes, int]:
        """Indexes of those of ``leaves`` (each ``hash_size`` bytes) already recorded: a dict,
        usually empty."""
        wanted = set(leaves)
        tail = self._tail
        found = {h: tail[h] for h in wanted.intersection(tail)}  # walks the smaller side
        if not self._folded or not wanted:
            return found
        probes = list(wanted)
        keys = np.frombuffer(b"".join(probes), dtype=KEY)[:: self._n // 8].astype(np.int64)
        where = np.searchsorted(self._keys, keys, side="left")
        inside = where < len(self._keys)
        hits = np.flatnonzero(inside)[self._keys[where[inside]] == keys[inside]]
        for i in hits.tolist():
            # Equal 8-byte keys are not yet equal hashes: compare every candidate in full.
            leaf, key, pos = probes[i], int(keys[i]), int(where[i])
            while pos < len(self._keys) and int(self._keys[pos]) == key:
                index = int(self._order[pos])
                if self._leaf(index) == leaf and (leaf not in found or index < found[leaf]):
                    found[leaf] = index
                pos += 1
        return found

    @property
    def nbytes(self) -> int:
        """Memory held by the sorted arrays (the tail aside)."""
        return int(self._keys.nbytes + self._order.nbytes)
