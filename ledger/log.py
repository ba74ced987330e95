"""The append-only log: RFC 9162 Merkle tree over events, stored in SQLite, with signed
C2SP checkpoints after every batch.

Durability: the database runs in WAL mode with ``synchronous=FULL``, and a batch (its entries
and the signed tree head covering them) is one transaction, so a batch is either wholly on
disk before any receipt is returned or not there at all; a crash cannot leave half an entry.

Speed: SQLite keeps each entry with its leaf hash; the interior nodes of the tree live in
memory as one packed ``bytearray`` per level (``ledger.merkle.MemoryTree``), rebuilt from the
leaf hashes when the log opens and checked against the last signed tree head. Proofs are then
slices plus a few hashes on the right edge, with no database round trip.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.errors import ConsistencyProofError, EventError, LedgerError, StorageError
from ledger.events import encode_event
from ledger.merkle import MemoryTree, consistency_proof, hasher_for
from ledger.models import Anchor, AnchorLink, ConsistencyProof, LogPublicKey, Receipt
from ledger.note import Checkpoint, NoteSigner, open_note, sign_note

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    leaf_hash BLOB NOT NULL,
    entry BLOB NOT NULL,
    leaf_key INTEGER NOT NULL
);
-- Lookups by entry hash go through the first 8 bytes as an integer: an index of integers is
-- a third the size of one of 32-byte blobs, which keeps appends fast at millions of entries.
CREATE INDEX IF NOT EXISTS entries_by_leaf_key ON entries (leaf_key);
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL,
    created TEXT NOT NULL
);
"""
MAX_BATCH = 10_000


_from_bytes = int.from_bytes


def _leaf_key(leaf_hash: bytes) -> int:
    return _from_bytes(leaf_hash[:8], "big", signed=True)


def connect(path: Path) -> sqlite3.Connection:
    """Open the ledger database with the durability settings the log relies on."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed batch survives power loss, not just a process crash.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA cache_size=-65536")
    return conn


class Log:
    """An RFC 9162 log in one SQLite file. Thread-safe: one writer at a time."""

    def __init__(
        self, path: Path, public_key: LogPublicKey, signers: Sequence[NoteSigner]
    ) -> None:
        self.path = Path(path)
        self.public_key = public_key
        self.origin = public_key.origin
        self.hasher = hasher_for(public_key.hash_algorithm)
        self._signers = list(signers)
        self._lock = threading.RLock()
        self._db = connect(self.path)
        self._db.executescript(SCHEMA)
        self._check_meta()
        self.tree = MemoryTree(self.hasher)
        # 8-byte prefixes of every leaf hash: a duplicate check costs a set lookup, and the
        # database is asked only on a (rare) prefix hit.
        self._keys: set[int] = set()
        self._load()

    # -- opening ---------------------------------------------------------------------------

    def _check_meta(self) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        wanted = {"origin": self.origin, "hash": self.public_key.hash_algorithm}
        if not meta:
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", wanted.items())
        elif {k: meta.get(k) for k in wanted} != wanted:
            raise StorageError(
                f"the database {self.path} belongs to another log (origin or hash differs)"
            )

    def _load(self) -> None:
        rows = self._db.execute("SELECT idx, leaf_hash, leaf_key FROM entries ORDER BY idx")
        batch: list[bytes] = []
        keys = self._keys
        for expected, (idx, leaf, key) in enumerate(rows):
            if idx != expected:
                raise StorageError(f"the database {self.path} is missing entry {expected}")
            batch.append(leaf)
            keys.add(key)
            if len(batch) == 65536:
                self.tree.append_leaf_hashes(batch)
                batch = []
        self.tree.append_leaf_hashes(batch)
        latest = self._latest_note()
        if latest is None:
            if self.tree.size:
                raise StorageError(f"the database {self.path} has entries but no tree head")
            return
        checkpoint = Checkpoint.parse(open_note(latest, self.public_key.verifiers()))
        if checkpoint.size != self.tree.size or checkpoint.root != self.tree.root():
            raise StorageError(
                f"the database {self.path} does not match its last signed tree head: "
                "it was altered outside the ledger"
            )

    def _latest_note(self) -> str | None:
        row = self._db.execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- appending -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.tree.size

    def append(self, events: Sequence[Mapping[str, Any]]) -> list[Receipt]:
        """Append a batch atomically; return one receipt per event, in order.

        An event already in the log is not added twice: its existing entry's receipt is
        returned, so a client may retry an append whose answer it lost.
        """
        with self._lock:
            indexes, note = self.append_batch(events)
            return [self._receipt(i, note) for i in indexes]

    def append_batch(self, events: Sequence[Mapping[str, Any]]) -> tuple[list[int], str]:
        """Append a batch atomically; return the entries' indexes and the signed tree head.

        The durable part of :meth:`append`, without building receipts (callers that only
        need indexes, and the benchmark, use this).
        """
        entries = [encode_event(e) for e in events]
        if not entries:
            raise EventError("the batch is empty: send at least one event")
        if len(entries) > MAX_BATCH:
            raise EventError(f"a batch holds at most {MAX_BATCH} events: split it")
        with self._lock:
            return self._append_entries(entries), self.latest_note()

    def append_entries(self, entries: Sequence[bytes]) -> tuple[list[int], str]:
        """Append entries that are already ``ledger.events.encode_event`` output.

        For embedding callers that encoded (and so validated) their events themselves, and
        for the benchmark; the gRPC service never calls this with client bytes.
        """
        if not entries:
            raise EventError("the batch is empty: send at least one event")
        with self._lock:
            return self._append_entries(list(entries)), self.latest_note()

    def _known(self, leaves: list[bytes], leaf_keys: list[int]) -> dict[bytes, int]:
        """Indexes of the leaves already in the log, looked up in chunks."""
        known: dict[bytes, int] = {}
        wanted = set(leaves)
        keys = [k for k in set(leaf_keys) if k in self._keys]
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT leaf_hash, idx FROM entries WHERE leaf_key IN ({marks}) ORDER BY idx",
                chunk,
            )
            for leaf_hash, idx in rows:
                if leaf_hash in wanted:
                    known.setdefault(bytes(leaf_hash), idx)
        return known

    def _append_entries(self, entries: list[bytes]) -> list[int]:
        leaf = self.hasher.leaf
        leaves = [leaf(e) for e in entries]
        leaf_keys = [_leaf_key(h) for h in leaves]
        indexes: list[int] = []
        new_rows: list[tuple[int, bytes, bytes, int]] = []
        seen = self._known(leaves, leaf_keys)
        next_index = self.tree.size
        for entry, leaf_hash, key in zip(entries, leaves, leaf_keys, strict=True):
            existing = seen.get(leaf_hash)
            if existing is None:
                existing = next_index
                next_index += 1
                new_rows.append((existing, leaf_hash, entry, key))
                seen[leaf_hash] = existing
            indexes.append(existing)
        if new_rows:
            self._commit(new_rows)
            self._keys.update(row[3] for row in new_rows)
        return indexes

    def _commit(self, rows: list[tuple[int, bytes, bytes, int]]) -> None:
        new_tree_size = self.tree.size + len(rows)
        # Work on the in-memory tree first; undo it if the transaction fails.
        old_size = self.tree.size
        self.tree.append_leaf_hashes([r[1] for r in rows])
        note = self._sign(new_tree_size)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?)", rows)
            self._db.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?)",
                (new_tree_size, note, datetime.now(UTC).isoformat()),
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self.tree.truncate(old_size)
            raise StorageError(f"could not write to the ledger database: {exc}") from exc

    def _sign(self, size: int) -> str:
        checkpoint = Checkpoint(self.origin, size, self.tree.root(size))
        return sign_note(checkpoint.text(), self._signers)

    # -- reading ---------------------------------------------------------------------------

    def index_of(self, leaf_hash: bytes) -> int | None:
        row = self._db.execute(
            "SELECT idx FROM entries WHERE leaf_key = ? AND leaf_hash = ? ORDER BY idx LIMIT 1",
            (_leaf_key(leaf_hash), leaf_hash),
        ).fetchone()
        return row[0] if row else None

    def entry(self, index: int) -> bytes:
        row = self._db.execute("SELECT entry FROM entries WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise LedgerError(f"the log has no entry {index}")
        return bytes(row[0])

    def latest_note(self) -> str:
        """The latest signed tree head; an empty log gets a freshly signed size-0 head."""
        with self._lock:
            return self._latest_note() or self._sign(0)

    def latest_checkpoint(self) -> Checkpoint:
        return Checkpoint.parse(self.latest_note().split("\n\n")[0] + "\n")

    def note_at(self, size: int) -> str | None:
        row = self._db.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        return row[0] if row else None

    def tree_sizes(self) -> list[int]:
        return [r[0] for r in self._db.execute("SELECT size FROM checkpoints ORDER BY size")]

    def receipt(self, entry_hash: bytes | str, anchors: Iterable[Anchor] = ()) -> Receipt:
        """A receipt for an entry against the latest tree head (plus links to ``anchors``)."""
        leaf = bytes.fromhex(entry_hash) if isinstance(entry_hash, str) else entry_hash
        with self._lock:
            index = self.index_of(leaf)
            if index is None:
                raise LedgerError("no entry with this hash is in the log")
            receipt = self._receipt(index, self.latest_note())
            links = [self._link(a, receipt) for a in anchors if a.size > index]
        return Receipt(**{**receipt.__dict__, "anchors": tuple(links)})

    def _receipt(self, index: int, note: str) -> Receipt:
        size = Checkpoint.parse(note.split("\n\n")[0] + "\n").size
        return Receipt(
            origin=self.origin,
            hash_algorithm=self.public_key.hash_algorithm,
            index=index,
            entry=self.entry(index),
            checkpoint=note,
            inclusion_proof=tuple(self.tree.inclusion_proof(index, size)),
        )

    def _link(self, anchor: Anchor, receipt: Receipt) -> AnchorLink:
        size = Checkpoint.parse(receipt.checkpoint.split("\n\n")[0] + "\n").size
        old, new = sorted((anchor.size, size))
        proof = () if old == new else tuple(consistency_proof(self.tree, old, new))
        return AnchorLink(anchor, proof)

    def consistency(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """Proof that the signed tree of ``old_size`` is a prefix of that of ``new_size``
        (default: the latest). Both sizes must be sizes the log signed a tree head for."""
        with self._lock:
            latest = self.latest_checkpoint().size
            new_size = latest if new_size is None else new_size
            old_note, new_note = self.note_at(old_size), self.note_at(new_size)
            if old_note is None or new_note is None:
                missing = old_size if old_note is None else new_size
                raise ConsistencyProofError(
                    f"the log signed no tree head of size {missing}: use a size it published "
                    f"(latest is {latest})"
                )
            if old_size > new_size:
                raise ConsistencyProofError("the old size must not be larger than the new size")
            proof = () if old_size == new_size else consistency_proof(self.tree, old_size, new_size)
        return ConsistencyProof(
            self.origin, self.public_key.hash_algorithm, old_note, new_note, tuple(proof)
        )

    def entries(self, start: int = 0, end: int | None = None) -> Iterable[tuple[int, bytes]]:
        end = self.size if end is None else end
        yield from self._db.execute(
            "SELECT idx, entry FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end)
        )
