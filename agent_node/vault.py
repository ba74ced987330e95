"""The node's vault: a SQLite database (through sqlite-utils for schema work) holding the
synced datasets, per-subject wrapped SM4 data keys, wallet bindings and grants, with the
activity database attached (``agent_node.activity``: the hash-chained access log, budgets
used, spent nonces and released answer sets, everything a query writes).

Rows are tied to an opaque subject reference (keyed HMAC of the subject key), never to the
key itself. Identity and sentiment columns are SM4-GCM encrypted under the subject's data key;
transaction columns stay in typed plain columns so that aggregates run inside SQL.
``PRAGMA secure_delete=ON`` overwrites deleted content on disk.

Performance (see docs/operator.md, "Performance"): the database runs in WAL mode with
``synchronous=FULL``; queries read from per-thread connections inside a read transaction
(a consistent snapshot that never blocks the writer), and the writes of concurrent queries
(access-log appends, budget debits, released answer sets) go through one ``GroupCommitter``
that commits them in a single transaction, so that one fsync (of the activity database's
WAL only) makes a whole batch durable.
Each dataset table carries covering indexes ``(column, sid, rfp, numeric columns...)`` for
every ``index = true`` column and ``(sid, rfp, numeric columns...)``, so that consent-scoped
group-bys run from an index in group order without sorting and without touching the table.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import queue
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from agent_node import accesslog, activity, locations, nonces, releases, spend
from agent_node.datamap import DataMap, DatasetSpec
from agent_node.errors import SourceError, VaultError
from agent_node.sources import SourceRow, read_rows, redact
from agent_node.vaultcrypto import VaultKeys, encrypt_cell
from consent.utctime import utc_text

log = logging.getLogger("agent_node.vault")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
  sid INTEGER PRIMARY KEY, subject_ref TEXT NOT NULL UNIQUE, wrapped_key BLOB NOT NULL,
  created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bindings (
  sid INTEGER NOT NULL REFERENCES subjects(sid), did TEXT NOT NULL, bound_at TEXT NOT NULL,
  PRIMARY KEY (sid, did));
CREATE INDEX IF NOT EXISTS bindings_did ON bindings(did);
CREATE TABLE IF NOT EXISTS datasets (
  name TEXT PRIMARY KEY, layout TEXT NOT NULL, synced_at TEXT, row_count INTEGER);
CREATE TABLE IF NOT EXISTS erased_subjects (
  subject_ref TEXT PRIMARY KEY, erased_at TEXT NOT NULL, proof_digest TEXT NOT NULL)
  WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('consent_version', '0');
CREATE TRIGGER IF NOT EXISTS consent_unbound AFTER DELETE ON bindings BEGIN
  UPDATE meta SET value = value + 1 WHERE key = 'consent_version'; END;
CREATE TRIGGER IF NOT EXISTS consent_subject_gone AFTER DELETE ON subjects BEGIN
  UPDATE meta SET value = value + 1 WHERE key = 'consent_version'; END;
INSERT OR IGNORE INTO meta (key, value) VALUES ('grants_version', '0');
CREATE TRIGGER IF NOT EXISTS consent_bound AFTER INSERT ON bindings BEGIN
  UPDATE meta SET value = value + 1 WHERE key = 'grants_version'; END;
"""
INSERT_BATCH = 2000
#: Physical layout of dataset tables; a change makes 'sov-node sync' rebuild them.
LAYOUT_VERSION = 2
#: Row fingerprints are 40-bit, so that SQL can SUM() up to 2**23 of them without overflow.
RFP_BITS = 40
#: Private page cache per connection (each server thread holds one): 4 MiB kept RSS at 1M
#: rows within 1.5x of just started (1.38-1.41; 16 MiB: 1.47-1.56) at the same speed.
CACHE_KIB = 4096
#: No memory-mapped I/O (issue 15): with a 1 GiB map every page a worker scanned stayed
#: counted in its RSS (loaded 1.55-1.70x just started, target 1.5); read through the OS page
#: cache instead, the loaded node measured 1.34-1.36x, group-by 1.03-1.39x raw sqlite3.
MMAP_BYTES = 0
MAX_BATCH = 512
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return utc_text(moment)


def table_name(dataset: str) -> str:
    return f"ds_{dataset}"


def plain_column(column: str) -> str:
    return f"c_{column}"


def encrypted_column(column: str) -> str:
    return f"e_{column}"


def covering_columns(dataset: DatasetSpec) -> list[str]:
    """The plain numeric columns every covering index carries (measures read from there)."""
    return [plain_column(c.name) for c in dataset.columns.values()
            if c.numeric and not c.encrypted]


@dataclass(frozen=True)
class SyncStats:
    dataset: str
    inserted: int
    updated: int
    deleted: int
    unchanged: int
    #: Malformed source rows left out (data map ``on_bad_row = "skip"``) and the first
    #: MAX_REPORTED of them in words (where, which column, the value unless it identifies).
    skipped: int = 0
    problems: tuple[str, ...] = ()


class BadRow(SourceError):
    """A malformed source row: where it is and what is wrong, in one sentence."""


MAX_REPORTED = 20
PROGRESS_EVERY = 1000
RowsRead = Callable[[str, int], None]


class Batch:
    """What the jobs of one group-commit transaction share: a memo (values that only the
    batch's own jobs can change, such as the access-log head) and writes deferred to just
    before COMMIT, so that a batch issues a few statements instead of a few per job."""

    def __init__(self, cache: dict[str, Any] | None = None) -> None:
        self.memo: dict[str, Any] = {}
        #: Lives as long as the committer: only for facts that a rollback cannot undo, i.e.
        #: filled from ``after_commit`` callbacks (such as ids of append-only rows).
        self.cache: dict[str, Any] = cache if cache is not None else {}
        self._deferred: dict[str, Callable[[sqlite3.Connection], None]] = {}
        self._committed: list[Callable[[], None]] = []

    def before_commit(self, key: str, fn: Callable[[sqlite3.Connection], None]) -> None:
        """Run ``fn`` once, inside the transaction, after the last job (first ``key`` wins)."""
        self._deferred.setdefault(key, fn)

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the batch is durably committed (never after a rollback)."""
        self._committed.append(fn)

    def flush(self, conn: sqlite3.Connection) -> None:
        for fn in self._deferred.values():
            fn(conn)

    def committed(self) -> None:
        for fn in self._committed:
            fn()


class _Job:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection, Batch], Any]) -> None:
        self.fn = fn
        self.done = False  # read and written only under the committer's leader lock
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommitter:
    """Durable group commit: queued jobs run one after another in one IMMEDIATE
    transaction, then COMMIT once (one WAL fsync under synchronous=FULL).

    The committing is done by a leader, not by a thread of its own: each caller queues its
    job and takes the leader lock; whoever holds it runs every job queued so far (its own
    and those of callers waiting behind it) and commits them as one batch. A caller alone
    thus commits on its own thread, with no hand-off to a writer thread and back (two
    context switches per query, which on a loaded machine cost a scheduler slice each),
    while concurrent callers still share one fsync.

    ``submit`` returns only after the transaction holding the job's writes is committed, so a
    caller that answers after ``submit`` never releases anything whose record could be lost.
    Jobs run one after another, so each sees the writes of the jobs before it (what makes
    checks such as the overlap control and budget debits race-free). A job refuses by raising
    before it writes anything; the others still commit. A job that raises after writing makes
    the whole batch roll back (every job then fails with ``VaultError``): nothing partial is
    ever committed.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection],
                 lock_path: Path | None = None) -> None:
        self._connect = connect
        self._lock_path = lock_path
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._leader = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._flock: int | None = None
        self._cache: dict[str, Any] = {}
        _COMMITTERS.add(self)

    def submit(self, fn: Callable[[sqlite3.Connection, Batch], T]) -> T:
        job = _Job(fn)
        self._queue.put(job)
        with self._leader:
            while not job.done:  # more than MAX_BATCH were queued before it: lead again
                self._lead()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]

    def _lead(self) -> None:
        """Commit the jobs queued so far as one batch (the leader lock is held)."""
        if self._conn is None:
            self._conn = self._connect()
            self._flock = self._open_lock()
        jobs: list[_Job] = []
        if self._flock is not None:
            # Worker processes serving one vault take turns here rather than in SQLite's
            # busy handler, which sleeps 1, 2, 5... ms between tries: flock wakes the next
            # writer the moment the lock is free. Jobs queued meanwhile join the batch.
            fcntl.flock(self._flock, fcntl.LOCK_EX)
        try:
            while len(jobs) < MAX_BATCH:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(self._conn, jobs)
        finally:
            if self._flock is not None:
                fcntl.flock(self._flock, fcntl.LOCK_UN)

    def _forget(self) -> None:
        """In a forked child: the parent's connection, locks and queue are not its own."""
        self._leader = threading.Lock()
        self._conn, self._flock = None, None
        self._queue = queue.SimpleQueue()


    def _open_lock(self) -> int | None:
        """The write-lock file's descriptor; None (SQLite's own lock still orders the
        writers, only less promptly) if it cannot be opened, e.g. on a read-only home."""
        if self._lock_path is None:
            return None
        try:
            return os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning(json.dumps({"event": "vault-write-lock-unavailable",
                                    "error": type(exc).__name__}))
            return None

    def _commit(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        batch = Batch(self._cache)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                changes = conn.total_changes
                try:
                    job.result = job.fn(conn, batch)
                except BaseException as exc:  # handed to the job's caller, not swallowed
                    job.error = exc
                    if conn.total_changes != changes:
                        raise _PartialJob from exc
            batch.flush(conn)
            conn.execute("COMMIT")
            batch.committed()
        except Exception as exc:  # every job gets the failure; the writer thread lives on
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = VaultError(f"the vault could not commit ({exc.__class__.__name__}); "
                                 "nothing was recorded, retry")
            for job in jobs:
                job.error = job.error or failure
                job.result = None
        finally:
            for job in jobs:
                job.done = True


_COMMITTERS: weakref.WeakSet[GroupCommitter] = weakref.WeakSet()


def _forget_committers() -> None:
    for committer in list(_COMMITTERS):
        committer._forget()


os.register_at_fork(after_in_child=_forget_committers)


class _PartialJob(Exception):
    """A job raised after writing: the batch must not commit."""


def activity_tables() -> tuple[str, ...]:
    """The tables that live in the activity database (``agent_node.activity``): every table
    a query writes, as their owners name them."""
    from agent_node import grantstore  # it imports this module

    return (*accesslog.LOG_TABLES, *nonces.TABLES, *releases.TABLES, *spend.TABLES,
            *grantstore.USAGE_TABLES)


def ensure_activity_tables(conn: sqlite3.Connection, db: str = activity.SCHEMA) -> None:
    """Create the activity tables in schema ``db``, each by its owner."""
    from agent_node import grantstore

    accesslog.ensure(conn, db)
    nonces.ensure(conn, db)
    releases.ensure(conn, db)
    spend.ensure(conn, db)
    grantstore.ensure_usage(conn, db)


def _ensure_stores(conn: sqlite3.Connection) -> None:
    """Every store's tables, created and upgraded by the module that owns them (outside a
    transaction); a home from before the activity database has its activity tables
    upgraded where they are, then moved there once."""
    from agent_node import grantstore

    grantstore.ensure(conn)
    legacy = activity.tables_in(conn, "main", activity_tables())
    if legacy:  # whatever the old layout lacked is added beside it, and moves with it
        ensure_activity_tables(conn, "main")
        legacy = activity.tables_in(conn, "main", activity_tables())
    if "access_log" in legacy:
        accesslog.upgrade(conn, "main")
    if "grant_usage" in legacy:
        grantstore.upgrade_usage(conn)
    ensure_activity_tables(conn)
    moved = activity.migrate(conn, legacy)
    if moved:
        log.info(json.dumps({"event": "activity-tables-moved", "tables": moved}))
    accesslog.upgrade(conn, activity.SCHEMA)
    grantstore.upgrade_usage(conn)


class Vault:
    """Opens connections to the vault database, one per thread."""

    def __init__(self, path: Path, keys: VaultKeys) -> None:
        self.path = Path(path)
        self.activity_path = activity.path_beside(self.path)
        self.keys = keys
        self._local = threading.local()
        with self.connection() as conn:
            conn.executescript(SCHEMA)
            _ensure_stores(conn)
        self.committer = GroupCommitter(self._open, self.path.with_name(
            self.path.name + ".write-lock"))
        self._layouts: dict[int, tuple[DatasetSpec, str]] = {}

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise VaultError(f"cannot open the vault at {self.path}: {exc}") from None
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit is fsynced, so a committed access event survives a power cut;
        # group commit (GroupCommitter) amortises that fsync over concurrent queries.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA temp_store=MEMORY")
        # Small private caches: readers share the file through the OS page cache (read(),
        # not mmap: see MMAP_BYTES).
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        try:
            activity.attach(conn, self.activity_path, cache_kib=CACHE_KIB,
                            mmap_bytes=MMAP_BYTES)
        except sqlite3.Error as exc:
            conn.close()
            raise VaultError(f"cannot open the activity database at {self.activity_path}: "
                             f"{exc}") from None
        return conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        yield conn

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on this thread's connection: one consistent view of the vault
        that neither waits for nor blocks the writer (WAL). Temp tables may be written."""
        with self.connection() as conn:
            conn.execute("BEGIN")
            self._local.after = []
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")  # reads only, plus temp tables kept for the next query
            for callback in self._local.after:
                callback()

    @contextmanager
    def frozen_snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on this thread's connection whose views of the vault and of the
        activity database are of the same moment (a backup's). Each file's snapshot starts
        at its first read; both are started while another connection holds both write locks,
        so no transaction writing the two files can commit in between."""
        fence = self._open()
        try:
            with self.connection() as conn:
                fence.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute("BEGIN")
                    conn.execute("SELECT count(*) FROM main.sqlite_master").fetchone()
                    conn.execute(f"SELECT count(*) FROM {activity.SCHEMA}.sqlite_master"
                                 ).fetchone()
                finally:
                    fence.execute("ROLLBACK")
                try:
                    yield conn
                finally:
                    conn.execute("COMMIT")  # reads only
        finally:
            fence.close()

    def after_snapshot(self, conn: sqlite3.Connection, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the current snapshot on ``conn`` ends without error."""
        self._local.after.append(callback)

    def commit(self, fn: Callable[[sqlite3.Connection, Batch], T]) -> T:
        """Run ``fn`` in the group-committed write transaction; returns once it is durable."""
        return self.committer.submit(fn)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: writers are serialised, so debits and log appends of one
        query commit together or not at all."""
        with self.connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- subjects ---------------------------------------------------------------------------

    def subject_sid(self, conn: sqlite3.Connection, subject_ref: str) -> int:
        """The subject's row id, creating the subject and its wrapped data key if new."""
        row = conn.execute("SELECT sid FROM subjects WHERE subject_ref = ?",
                           (subject_ref,)).fetchone()
        if row:
            return int(row[0])
        _, wrapped = self.keys.new_wrapped_data_key(subject_ref)
        cursor = conn.execute(
            "INSERT INTO subjects (subject_ref, wrapped_key, created) VALUES (?, ?, ?)",
            (subject_ref, wrapped, iso(utcnow())))
        assert cursor.lastrowid is not None  # an INSERT always sets it
        return int(cursor.lastrowid)

    def data_key(self, conn: sqlite3.Connection, sid: int) -> bytes:
        row = conn.execute("SELECT subject_ref, wrapped_key FROM subjects WHERE sid = ?",
                           (sid,)).fetchone()
        if row is None:
            raise VaultError("a row points at a subject the vault does not hold")
        return self.keys.unwrap_data_key(row[0], row[1])

    def bind(self, subject_key: list[str], did: str) -> str:
        """Bind the subject with ``subject_key`` to a wallet DID; returns the subject ref."""
        ref = self.keys.subject_ref(subject_key)
        with self.transaction() as conn:
            sid = self.subject_sid(conn, ref)
            conn.execute("INSERT OR IGNORE INTO bindings (sid, did, bound_at) VALUES (?, ?, ?)",
                         (sid, did, iso(utcnow())))
        return ref

    def datasets_holding(self, subject_ref: str) -> list[str]:
        """The synced datasets with at least one row of this subject (a bind to a customer
        id found in none is most likely a typo)."""
        with self.connection() as conn:
            row = conn.execute("SELECT sid FROM subjects WHERE subject_ref = ?",
                               (subject_ref,)).fetchone()
            if row is None:
                return []
            names = [r[0] for r in conn.execute("SELECT name FROM datasets ORDER BY name")]
            return [name for name in names if conn.execute(
                f'SELECT 1 FROM "{table_name(name)}" WHERE sid = ? LIMIT 1',
                (row[0],)).fetchone()]

    def unbind(self, subject_key: list[str], did: str) -> str:
        """Remove the binding of the subject with ``subject_key`` to ``did``; returns the
        subject ref. The wallet's grants stop covering this customer before the next answer
        (the consent version moves). ``VaultError`` when there is no such binding."""
        ref = self.keys.subject_ref(subject_key)
        with self.transaction() as conn:
            removed = conn.execute(
                "DELETE FROM bindings WHERE did = ? AND sid = "
                "(SELECT sid FROM subjects WHERE subject_ref = ?)", (did, ref)).rowcount
        if not removed:
            raise VaultError("that customer is not bound to this DID: nothing was changed "
                             "('sov-node subjects list' shows the bindings)")
        return ref

    def bindings(self) -> list[dict[str, str]]:
        """Every binding as (subject ref, DID, bound_at), by ref: no customer key or value."""
        with self.connection() as conn:
            return [{"subject_ref": ref, "did": did, "bound_at": at} for ref, did, at in
                    conn.execute("SELECT s.subject_ref, b.did, b.bound_at FROM bindings b "
                                 "JOIN subjects s USING (sid) ORDER BY s.subject_ref, b.did")]

    def sids_for_did(self, conn: sqlite3.Connection, did: str) -> list[int]:
        return [r[0] for r in conn.execute("SELECT sid FROM bindings WHERE did = ?", (did,))]

    def refs_for_sids(self, conn: sqlite3.Connection, sids: list[int]) -> list[str]:
        if not sids:
            return []
        found = dict(conn.execute("SELECT sid, subject_ref FROM subjects WHERE sid IN "
                                  "(SELECT value FROM json_each(?))", (json.dumps(sids),)))
        return [found[sid] for sid in sids if sid in found]

    # -- datasets ---------------------------------------------------------------------------

    def removed_datasets(self, datamap: DataMap) -> dict[str, int]:
        """Datasets synced before that the data map no longer has: name -> rows kept."""
        with self.connection() as conn:
            rows = conn.execute("SELECT name, row_count FROM datasets").fetchall()
        return {name: int(count or 0) for name, count in rows if name not in datamap.datasets}

    def drop_datasets(self, names: list[str]) -> None:
        """Delete the rows and table of datasets gone from the data map, in one transaction
        (only names :meth:`removed_datasets` gives are dropped by the CLI)."""
        with self.transaction() as conn:
            for name in names:
                conn.execute(f'DROP TABLE IF EXISTS "{table_name(name)}"')
                conn.execute("DELETE FROM datasets WHERE name = ?", (name,))

    def dataset_ready(self, conn: sqlite3.Connection, dataset: DatasetSpec) -> bool:
        row = conn.execute("SELECT layout FROM datasets WHERE name = ?",
                           (dataset.name,)).fetchone()
        return bool(row) and row[0] == self.layout(dataset)

    def layout(self, dataset: DatasetSpec) -> str:
        """What the vault table of ``dataset`` must look like (a change rebuilds it)."""
        cached = self._layouts.get(id(dataset))
        if cached is None or cached[0] is not dataset:
            cached = self._layouts[id(dataset)] = (dataset, _layout(dataset))
        return cached[1]


def _layout(dataset: DatasetSpec) -> str:
    """What the vault table's shape depends on; a change rebuilds the table."""
    return json.dumps({
        "v": LAYOUT_VERSION, "subject_key": dataset.subject_key, "row_key": dataset.row_key,
        "columns": [[c.name, c.type, c.scope, c.source_column, c.index]
                    for c in dataset.columns.values()],
    }, sort_keys=True)


def _sql_type(type_: str) -> type:
    return {"text": str, "integer": int, "real": float}[type_]


def _ensure_table(vault: Vault, conn: sqlite3.Connection, dataset: DatasetSpec) -> None:
    if vault.dataset_ready(conn, dataset):
        return
    db = sqlite_utils.Database(conn)
    name = table_name(dataset.name)
    if db[name].exists():
        db[name].drop()
    columns: dict[str, type] = {"row_id": str, "sid": int, "rfp": int, "row_mac": str}
    for column in dataset.columns.values():
        if column.encrypted:
            columns[encrypted_column(column.name)] = bytes
        else:
            columns[plain_column(column.name)] = _sql_type(column.type)
    table = db.table(name)
    table.create(columns, pk="row_id", not_null={"sid", "rfp", "row_mac"})
    # Covering indexes: a consent-scoped aggregate grouped or filtered by an indexed column
    # reads (column, sid, rfp, measures) in group order, with no sort and no table lookups.
    measures = covering_columns(dataset)
    table.create_index(["sid", "rfp", *measures], index_name=f"{name}_sid")
    for column in dataset.columns.values():
        if column.index and not column.encrypted:
            own = plain_column(column.name)
            table.create_index([own, "sid", "rfp", *(m for m in measures if m != own)],
                               index_name=f"{name}_{column.name}")
    conn.execute("INSERT OR REPLACE INTO datasets (name, layout, synced_at, row_count) "
                 "VALUES (?, ?, NULL, 0)", (dataset.name, _layout(dataset)))


def row_fingerprint(row_id: str, row_mac: str) -> int:
    """A row's identity and content as a 40-bit integer, for the overlap control.

    Both inputs are keyed MACs, so a requester cannot steer two row sets to the same sum;
    the content MAC makes an updated row count as a different row.
    """
    digest = hashlib.sha256(f"{row_id}|{row_mac}".encode()).digest()
    return int.from_bytes(digest[:RFP_BITS // 8], "big")


def _convert(value: Any, type_: str) -> Any:
    """The value as its column's type; ValueError if it is not one (never rounded: 3.7 is not
    an integer)."""
    if value is None or value == "":
        return None
    if type_ == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = float(value)
        if not number.is_integer():
            raise ValueError("not a whole number")
        return int(number)
    if type_ == "real":
        if isinstance(value, bool):
            raise ValueError("a boolean")
        return float(value)
    return str(value)


class _Syncer:
    """One dataset's incremental sync inside one transaction."""

    def __init__(self, vault: Vault, conn: sqlite3.Connection, datamap: DataMap,
                 dataset: DatasetSpec) -> None:
        self.vault, self.conn, self.datamap, self.dataset = vault, conn, datamap, dataset
        self.table = table_name(dataset.name)
        self.subjects: dict[str, tuple[int, Any]] = {}
        self.occurrences: dict[str, int] = {}
        cols = ["row_id", "sid", "rfp", "row_mac"]
        for column in dataset.columns.values():
            cols.append(encrypted_column(column.name) if column.encrypted
                        else plain_column(column.name))
        self.columns = cols
        self.erased = erased_refs(conn)
        self.skipped = 0  # rows of erased customers
        self.bad: list[str] = []

    def _subject(self, ref: str) -> tuple[int, Any]:
        cached = self.subjects.get(ref)
        if cached is None:
            sid = self.vault.subject_sid(self.conn, ref)
            cipher = self.vault.keys.cell_cipher(self.vault.data_key(self.conn, sid))
            cached = self.subjects[ref] = (sid, cipher)
        return cached

    def _row_id(self, key_values: list[Any], values: list[Any], raw: dict[str, Any]) -> str:
        keys = self.vault.keys
        if self.dataset.row_key:
            return keys.row_mac(["id", self.dataset.name, key_values,
                                 [str(raw[c]) for c in self.dataset.row_key]])
        # Content-keyed rows: identical rows stay distinct through their occurrence number.
        content = keys.row_mac(["content", self.dataset.name, key_values, values])
        seen = self.occurrences.get(content, 0)
        self.occurrences[content] = seen + 1
        return keys.row_mac(["occ", content, seen])

    def _check_shape(self, row: SourceRow) -> None:
        """A row malformed at the source, or without a subject, is a :class:`BadRow`."""
        if row.problem is not None:
            raise BadRow(f"{row.where}: {row.problem}")
        if any(row.values[c] is None or row.values[c] == "" for c in self.dataset.subject_key):
            raise BadRow(f"{row.where}: the subject key "
                         f"({', '.join(self.dataset.subject_key)}) is empty")

    def _values(self, row: SourceRow) -> list[Any]:
        """The mapped values, converted; a :class:`BadRow` names the row, the column and the
        value (redacted for identity columns)."""
        dataset, raw = self.dataset, row.values
        values = []
        for column in dataset.columns.values():
            value = raw[column.source_column]
            try:
                values.append(_convert(value, column.type))
            except (TypeError, ValueError):
                raise BadRow(f"{row.where}: column {column.source_column!r}: "
                             f"{redact(dataset, column.source_column, value)} is not of type "
                             f"{column.type}") from None
        return values

    def record(self, row: SourceRow) -> tuple[str, str, list[Any]] | None:
        """The row as stored, or None for a row of an erased customer (not stored)."""
        dataset = self.dataset
        self._check_shape(row)
        key_values = [str(row.values[c]) for c in dataset.subject_key]
        ref = self.vault.keys.subject_ref(key_values)
        if ref in self.erased:
            return None  # erased here: the source's copy never comes back (issue 13)
        values = self._values(row)
        sid, cipher = self._subject(ref)
        row_id = self._row_id(key_values, values, row.values)
        mac = self.vault.keys.row_mac(["v", values])
        stored: list[Any] = [row_id, sid, row_fingerprint(row_id, mac), mac]
        for column, value in zip(dataset.columns.values(), values, strict=True):
            if column.encrypted:
                aad = f"{dataset.name}|{column.name}|{row_id}".encode()
                stored.append(encrypt_cell(cipher, value, aad))
            else:
                stored.append(value)
        return row_id, mac, stored

    def _bad_row(self, exc: BadRow) -> None:
        """Refuse the sync (the transaction rolls back: nothing changes), or note the row."""
        if self.dataset.on_bad_row != "skip":
            raise SourceError(f"dataset {self.dataset.name!r}, {exc}; nothing was synced: fix "
                              "the source, or set on_bad_row = \"skip\" for this dataset "
                              "in the data map to leave such rows out") from None
        self.bad.append(str(exc))

    def run(self, on_rows: RowsRead | None = None) -> SyncStats:
        # Rows of customers imported from another node have no source here (importstore).
        existing = dict(self.conn.execute(f'SELECT row_id, row_mac FROM "{self.table}" '
                                          "WHERE sid NOT IN (SELECT sid FROM imports)"))
        placeholders = ", ".join("?" for _ in self.columns)
        names = ", ".join(f'"{c}"' for c in self.columns)
        insert = f'INSERT OR REPLACE INTO "{self.table}" ({names}) VALUES ({placeholders})'
        batch: list[list[Any]] = []
        inserted = updated = unchanged = 0
        seen: set[str] = set()
        for number, row in enumerate(read_rows(self.datamap, self.dataset), 1):
            if on_rows is not None and number % PROGRESS_EVERY == 0:
                on_rows(self.dataset.name, PROGRESS_EVERY)
            try:
                recorded = self.record(row)
            except BadRow as exc:
                self._bad_row(exc)
                continue
            if recorded is None:
                self.skipped += 1
                continue
            row_id, mac, stored = recorded
            if row_id in seen:
                raise SourceError(f"dataset {self.dataset.name!r}: two rows share a row key; "
                                  "fix row_key in the data map so that it is unique")
            seen.add(row_id)
            previous = existing.get(row_id)
            if previous == mac:
                unchanged += 1
                continue
            inserted += previous is None
            updated += previous is not None
            batch.append(stored)
            if len(batch) >= INSERT_BATCH:
                self.conn.executemany(insert, batch)
                batch.clear()
        if batch:
            self.conn.executemany(insert, batch)
        gone = [(r,) for r in existing if r not in seen]
        self.conn.executemany(f'DELETE FROM "{self.table}" WHERE row_id = ?', gone)
        self.conn.execute("UPDATE datasets SET synced_at = ?, row_count = ? WHERE name = ?",
                          (iso(utcnow()), len(seen), self.dataset.name))
        if inserted or updated or gone:
            # Statistics let the planner choose between a covering scan and per-subject seeks.
            self.conn.execute(f'ANALYZE "{self.table}"')
        return SyncStats(self.dataset.name, inserted, updated, len(gone), unchanged,
                         len(self.bad), tuple(self.bad[:MAX_REPORTED]))


def sync(vault: Vault, datamap: DataMap, only: list[str] | None = None,
         on_rows: RowsRead | None = None) -> list[SyncStats]:
    """Copy every mapped dataset (or ``only`` these) into the vault, incrementally; each
    dataset in one transaction, so a refused one changes nothing. ``on_rows(dataset, n)``
    hears of every ``PROGRESS_EVERY`` rows read (a progress display)."""
    from agent_node import importstore

    names = only or list(datamap.datasets)
    for name in names:
        if name not in datamap.datasets:
            raise VaultError(f"dataset {name!r} is not in the data map")
    stats = []
    for name in names:
        dataset = datamap.datasets[name]
        with vault.transaction() as conn:
            _ensure_table(vault, conn, dataset)
            importstore.ensure_schema(conn)
            stats.append(_Syncer(vault, conn, datamap, dataset).run(on_rows))
            importstore.materialise(vault, conn, dataset)  # e.g. into a rebuilt table
    return stats


# -- erasure (issue 13): the vault's locations and how an erasure treats them -----------------

def erased_refs(conn: sqlite3.Connection) -> set[str]:
    """The subject references erased at this node: their rows are never synced again."""
    return {r[0] for r in conn.execute("SELECT subject_ref FROM erased_subjects")}


def mark_erased(conn: sqlite3.Connection, refs: list[str], at: str, proof_digest: str) -> None:
    conn.executemany("INSERT OR IGNORE INTO erased_subjects (subject_ref, erased_at, "
                     "proof_digest) VALUES (?, ?, ?)", [(r, at, proof_digest) for r in refs])


def _erase_dataset_rows(conn: sqlite3.Connection, customer: locations.Customer
                        ) -> locations.Erased:
    rows = 0
    digests = []
    sids = locations.json_list(customer.sids)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND "
                                "name LIKE 'ds\\_%' ESCAPE '\\' ORDER BY name").fetchall():
        erased = locations.delete_rows(conn, name, "sid IN (SELECT value FROM json_each(?))",
                                       (sids,))
        rows += erased.rows
        digests.append([name, erased.rows, erased.digest])
    return locations.Erased(rows, locations.digest_rows(digests))


def _erase_keys(conn: sqlite3.Connection, customer: locations.Customer) -> locations.Erased:
    """Destroy the subjects' wrapped SM4 data keys. A subject whose reference is a member of
    a stored access set keeps its (sid, reference) row with an empty key: other customers'
    Merkle proofs are built over those references. The others go entirely."""
    sids = locations.json_list(customer.sids)
    rows = conn.execute("SELECT sid, subject_ref, wrapped_key FROM subjects WHERE sid IN "
                        "(SELECT value FROM json_each(?)) AND length(wrapped_key) > 0",
                        (sids,)).fetchall()
    kept = conn.execute("UPDATE subjects SET wrapped_key = X'' WHERE sid IN (SELECT value FROM "
                        "json_each(?)) AND sid IN (SELECT sid FROM access_set_subjects)",
                        (sids,)).rowcount
    conn.execute("DELETE FROM subjects WHERE sid IN (SELECT value FROM json_each(?)) AND sid "
                 "NOT IN (SELECT sid FROM access_set_subjects)", (sids,))
    return locations.Erased(len(rows), locations.digest_rows(rows), kept=kept)


def _erase_bindings(conn: sqlite3.Connection, customer: locations.Customer) -> locations.Erased:
    return locations.delete_rows(conn, "bindings", "did = ? OR sid IN (SELECT value FROM "
                                 "json_each(?))", (customer.did,
                                                   locations.json_list(customer.sids)))


def data_key_id(wrapped_key: bytes) -> str:
    """The id of a subject's data key as an erasure proof names it: SM3 of its wrapped form
    (identifies the key without revealing it; the wrapped form is useless without the node's
    master key, and destroyed with it)."""
    from consent.sm import sm3

    return "sm4:" + sm3(wrapped_key).hex()[:32]


_OWNER = "agent_node.vault"
locations.table("meta", _OWNER, "", "none")
locations.table("datasets", _OWNER, "", "none")
locations.table("dataset_rows", _OWNER, "the customer's synced rows (identity and sentiment "
                "cells SM4-encrypted under their data key, transaction values plain)",
                "delete", _erase_dataset_rows, pattern="ds_*")
locations.table("subjects", _OWNER, "the customer's opaque subject reference and wrapped SM4 "
                "data key", "destroy-key", _erase_keys)
locations.table("bindings", _OWNER, "the customer's wallet DID bound to their subject",
                "delete", _erase_bindings)
locations.table("erased_subjects", _OWNER, "opaque references of erased subjects, so that a "
                "sync or a restore never brings them back", "keep-opaque")
locations.file("vault", _OWNER, "vault.sqlite", "every vault table above, in database pages; "
               "deleted content is overwritten (secure_delete)", "delete")
locations.file("vault-wal", _OWNER, "vault.sqlite-wal", "recent page versions; checkpointed "
               "and truncated by an erasure", "delete")
locations.file("vault-shm", _OWNER, "vault.sqlite-shm", "the WAL index (page numbers)", "none")
locations.file("vault-journal", _OWNER, "vault.sqlite-journal", "a rollback journal, if any",
               "delete")
locations.file("vault-lock", _OWNER, "vault.sqlite.write-lock", "", "none")
