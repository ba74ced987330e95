"""The append-only log: RFC 9162 Merkle tree over events, stored in SQLite, with signed
C2SP checkpoints after every batch.

Durability: the database runs in WAL mode with ``synchronous=FULL``, and a batch (its entries
and the signed tree head covering them) is one transaction, so a batch is either wholly on
disk before any receipt is returned or not there at all; a crash cannot leave half an entry.

Speed: SQLite keeps each entry with its leaf hash and nothing else (no secondary index), in
16 KiB pages; the interior nodes of the tree live in memory as one packed ``bytearray`` per
level (``ledger.merkle.MemoryTree``), rebuilt from the leaf hashes when the log opens and
checked against the last signed tree head. Proofs are then slices plus a few hashes on the
right edge, with no database round trip. Lookups by entry hash (receipts, and the duplicate
check of every append) use ``ledger.leafindex``, derived from the same in-memory leaf hashes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger import subjectindex
from ledger.errors import (
    ConsistencyProofError,
    DuplicateEntry,
    EventError,
    LedgerError,
    StorageError,
)
from ledger.events import encode_event
from ledger.leafindex import LeafIndex
from ledger.merkle import MemoryTree, consistency_proof, hasher_for
from ledger.models import Anchor, AnchorLink, ConsistencyProof, LogPublicKey, Receipt
from ledger.note import Checkpoint, NoteSigner, open_note, sign_note

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    leaf_hash BLOB NOT NULL,
    entry BLOB NOT NULL
);
-- No index by entry hash: lookups by hash go through ledger.leafindex, derived in memory
-- from the leaf hashes (an index with random keys here halved append throughput at 1M).
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL,
    created TEXT NOT NULL
);
"""
# Layout 1 kept an 8-byte hash prefix in ``entries.leaf_key`` with an index on it; such
# databases are converted when opened (``_upgrade``).
LAYOUT = "2"
# Pages of 16 KiB: fewer, larger pages mean fewer B-tree splits and WAL frames per batch.
# SQLite takes it only when the file is created; older files keep their page size.
PAGE_SIZE = 16384
MAX_BATCH = 10_000


def connect(path: Path) -> sqlite3.Connection:
    """Open the ledger database with the durability settings the log relies on."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before WAL: a new file takes it
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
        subjectindex.ensure(self._db)
        self.tree = MemoryTree(self.hasher)
        self.leaf_index = LeafIndex(self.tree.levels[0], self.hasher.size)
        self._load()

    # -- opening ---------------------------------------------------------------------------

    def _check_meta(self) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        wanted = {"origin": self.origin, "hash": self.public_key.hash_algorithm}
        if not meta:
            self._db.executemany(
                "INSERT INTO meta VALUES (?, ?)", [*wanted.items(), ("layout", LAYOUT)]
            )
        elif {k: meta.get(k) for k in wanted} != wanted:
            raise StorageError(
                f"the database {self.path} belongs to another log (origin or hash differs)"
            )
        elif meta.get("layout") != LAYOUT:
            self._upgrade()

    def _upgrade(self) -> None:
        """Drop a layout-1 database's ``entries.leaf_key`` column and its index."""
        columns = [r[1] for r in self._db.execute("PRAGMA table_info(entries)")]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            if "leaf_key" in columns:
                self._db.execute("DROP INDEX IF EXISTS entries_by_leaf_key")
                self._db.execute("ALTER TABLE entries DROP COLUMN leaf_key")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('layout', ?)", (LAYOUT,))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StorageError(f"could not upgrade the ledger database {self.path}: {exc}") from exc

    def _load(self) -> None:
        count, last = self._db.execute("SELECT count(*), max(idx) FROM entries").fetchone()
        # idx is the primary key (unique): count == max + 1 with no negative index means
        # 0..count-1 are all there.
        first = self._db.execute("SELECT min(idx) FROM entries").fetchone()[0]
        if count and (first != 0 or last != count - 1):
            raise StorageError(f"the database {self.path} is missing entries")
        rows = self._db.execute("SELECT leaf_hash FROM entries ORDER BY idx")
        self.tree.load_leaf_hashes(
            b"".join([r[0] for r in chunk]) for chunk in iter(lambda: rows.fetchmany(65536), [])
        )
        self.leaf_index.rebuild(self.tree.size)
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

    def append_new(self, entries: Sequence[bytes]) -> list[Receipt]:
        """Append encoded entries as one batch, refusing the whole batch with
        :class:`DuplicateEntry` when one is in the log already or twice in it (a replayed
        append), so the tree never changes for a replay. What the service uses."""
        if not entries:
            raise EventError("the batch is empty: send at least one event")
        if len(entries) > MAX_BATCH:
            raise EventError(f"a batch holds at most {MAX_BATCH} events: split it")
        with self._lock:
            entries = list(entries)
            indexes = self._append_entries(entries, refuse_known=True)
            note = self.latest_note()
            # Every entry is new and in order (a replay was refused above): the receipts are
            # built from the bytes in hand and one parse of the tree head.
            size = Checkpoint.parse(note.split("\n\n")[0] + "\n").size
            return [self._receipt(i, note, entry, size)
                    for i, entry in zip(indexes, entries, strict=True)]

    def _append_entries(self, entries: list[bytes], refuse_known: bool = False) -> list[int]:
        leaf = self.hasher.leaf
        leaves = [leaf(e) for e in entries]
        start = self.tree.size
        seen = self.leaf_index.find_many(leaves)
        if refuse_known and (seen or len(set(leaves)) != len(leaves)):
            first: dict[bytes, int] = {}
            position = next(i for i, h in enumerate(leaves)
                            if h in seen or first.setdefault(h, i) != i)
            where = (f"in the log already (entry {seen[leaves[position]]})"
                     if leaves[position] in seen else "twice in the batch")
            raise DuplicateEntry(
                f"nothing was appended: event {position} is {where}, a replayed append; fetch "
                "the receipt of an entry you appended before by its hash (GetReceipt)"
            )
        if not seen and len(set(leaves)) == len(leaves):
            # Nothing in the log already and nothing twice in the batch (the common case):
            # skip the per-entry bookkeeping.
            self._commit(leaves, entries)
            return list(range(start, start + len(entries)))
        indexes: list[int] = []
        new_leaves: list[bytes] = []
        new_entries: list[bytes] = []
        next_index = start
        for entry, leaf_hash in zip(entries, leaves, strict=True):
            existing = seen.get(leaf_hash)
            if existing is None:
                existing = seen[leaf_hash] = next_index
                next_index += 1
                new_leaves.append(leaf_hash)
                new_entries.append(entry)
            indexes.append(existing)
        if new_leaves:
            self._commit(new_leaves, new_entries)
        return indexes

    def _commit(self, leaves: list[bytes], entries: list[bytes]) -> None:
        """Write new entries and the signed tree head (and maybe a merge) in one transaction."""
        old_size = self.tree.size
        new_size = old_size + len(leaves)
        # Work on the in-memory tree first; undo it if the transaction fails.
        self.tree.append_leaf_hashes(leaves)
        note = self._sign(new_size)
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO entries VALUES (?, ?, ?)",
                zip(range(old_size, new_size), leaves, entries, strict=True),
            )
            db.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?)",
                (new_size, note, datetime.now(UTC).isoformat()),
            )
            subjectindex.add(db, entries, old_size)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self.tree.truncate(old_size)
            raise StorageError(f"could not write to the ledger database: {exc}") from exc
        self.leaf_index.add(leaves, old_size)

    def _sign(self, size: int) -> str:
        checkpoint = Checkpoint(self.origin, size, self.tree.root(size))
        return sign_note(checkpoint.text(), self._signers)

    # -- reading ---------------------------------------------------------------------------

    def index_of(self, leaf_hash: bytes) -> int | None:
        with self._lock:
            return self.leaf_index.find(leaf_hash)

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

    def _receipt(self, index: int, note: str, entry: bytes | None = None,
                 size: int | None = None) -> Receipt:
        if size is None:
            size = Checkpoint.parse(note.split("\n\n")[0] + "\n").size
        return Receipt(
            origin=self.origin,
            hash_algorithm=self.public_key.hash_algorithm,
            index=index,
            entry=self.entry(index) if entry is None else entry,
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

    def find_access_heads(self, commitment: bytes, after_index: int = 0,
                          limit: int = subjectindex.MAX_FIND) -> tuple[list[Receipt], bool]:
        """Receipts (against the latest tree head) of the ``access_head`` entries naming the
        subject ``commitment``, from ``after_index`` on, oldest first; and whether more
        match after the last one returned."""
        limit = max(1, min(limit, subjectindex.MAX_FIND))
        with self._lock:
            note = self.latest_note()
            size = Checkpoint.parse(note.split("\n\n")[0] + "\n").size
            found = subjectindex.find(self._db, commitment, after_index, limit + 1, size)
            receipts = [self._receipt(i, note) for i in found[:limit]]
        return receipts, len(found) > limit

    def entries(self, start: int = 0, end: int | None = None) -> Iterable[tuple[int, bytes]]:
        end = self.size if end is None else end
        yield from self._db.execute(
            "SELECT idx, entry FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end)
        )
