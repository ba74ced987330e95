"""The node's vault: one SQLite database (through sqlite-utils for schema work) holding the
synced datasets, per-subject wrapped SM4 data keys, wallet bindings, grants, budgets, the
hash-chained access log and the record of released answer sets.

Rows are tied to an opaque subject reference (keyed HMAC of the subject key), never to the
key itself. Identity and sentiment columns are SM4-GCM encrypted under the subject's data key;
transaction columns stay in typed plain columns so that aggregates run inside SQL.
``PRAGMA secure_delete=ON`` overwrites deleted content on disk.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from agent_node.datamap import DataMap, DatasetSpec
from agent_node.errors import SourceError, VaultError
from agent_node.sources import read_rows
from agent_node.vaultcrypto import VaultKeys, encrypt_cell

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
CREATE TABLE IF NOT EXISTS grants (
  grant_id TEXT PRIMARY KEY, subject TEXT NOT NULL, requester TEXT NOT NULL,
  purpose TEXT NOT NULL, scopes TEXT NOT NULL, not_before REAL NOT NULL, expires REAL NOT NULL,
  max_queries INTEGER, dp_epsilon REAL, queries_used INTEGER NOT NULL DEFAULT 0,
  epsilon_spent REAL NOT NULL DEFAULT 0, digest TEXT NOT NULL, credential TEXT NOT NULL,
  received_at TEXT NOT NULL, revoked_at TEXT, revocation TEXT);
CREATE INDEX IF NOT EXISTS grants_requester ON grants(requester, purpose);
CREATE INDEX IF NOT EXISTS grants_subject ON grants(subject);
CREATE TABLE IF NOT EXISTS access_log (
  seq INTEGER PRIMARY KEY, time TEXT NOT NULL, body TEXT NOT NULL, body_digest TEXT NOT NULL,
  prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS access_subjects (
  sid INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (sid, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS access_grants (
  grant_id TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (grant_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS released_sets (
  id INTEGER PRIMARY KEY, requester TEXT NOT NULL, dataset TEXT NOT NULL, size INTEGER NOT NULL,
  digest TEXT NOT NULL, members BLOB NOT NULL, released_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS released_lookup ON released_sets(requester, dataset, size);
"""
INSERT_BATCH = 2000


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def table_name(dataset: str) -> str:
    return f"ds_{dataset}"


def plain_column(column: str) -> str:
    return f"c_{column}"


def encrypted_column(column: str) -> str:
    return f"e_{column}"


@dataclass(frozen=True)
class SyncStats:
    dataset: str
    inserted: int
    updated: int
    deleted: int
    unchanged: int


class Vault:
    """Opens connections to the vault database, one per thread."""

    def __init__(self, path: Path, keys: VaultKeys) -> None:
        self.path = Path(path)
        self.keys = keys
        self._local = threading.local()
        with self.connection() as conn:
            conn.executescript(SCHEMA)

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise VaultError(f"cannot open the vault at {self.path}: {exc}") from None
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA cache_size=-65536")
        return conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        yield conn

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

    def sids_for_did(self, conn: sqlite3.Connection, did: str) -> list[int]:
        return [r[0] for r in conn.execute("SELECT sid FROM bindings WHERE did = ?", (did,))]

    def refs_for_sids(self, conn: sqlite3.Connection, sids: list[int]) -> list[str]:
        refs = []
        for sid in sids:
            row = conn.execute("SELECT subject_ref FROM subjects WHERE sid = ?", (sid,)).fetchone()
            if row:
                refs.append(row[0])
        return refs

    # -- datasets ---------------------------------------------------------------------------

    def dataset_ready(self, conn: sqlite3.Connection, dataset: DatasetSpec) -> bool:
        row = conn.execute("SELECT layout FROM datasets WHERE name = ?",
                           (dataset.name,)).fetchone()
        return bool(row) and row[0] == _layout(dataset)


def _layout(dataset: DatasetSpec) -> str:
    """What the vault table's shape depends on; a change rebuilds the table."""
    return json.dumps({
        "subject_key": dataset.subject_key, "row_key": dataset.row_key,
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
    columns: dict[str, type] = {"row_id": str, "sid": int, "row_mac": str}
    for column in dataset.columns.values():
        if column.encrypted:
            columns[encrypted_column(column.name)] = bytes
        else:
            columns[plain_column(column.name)] = _sql_type(column.type)
    db[name].create(columns, pk="row_id", not_null={"sid", "row_mac"})
    db[name].create_index(["sid"], index_name=f"{name}_sid")
    for column in dataset.columns.values():
        if column.index and not column.encrypted:
            db[name].create_index([plain_column(column.name)],
                                  index_name=f"{name}_{column.name}")
    conn.execute("INSERT OR REPLACE INTO datasets (name, layout, synced_at, row_count) "
                 "VALUES (?, ?, NULL, 0)", (dataset.name, _layout(dataset)))


def _convert(value: Any, type_: str, dataset: str, column: str) -> Any:
    if value is None or value == "":
        return None
    try:
        if type_ == "integer":
            return int(value) if isinstance(value, int) else int(float(value))
        if type_ == "real":
            return float(value)
    except (TypeError, ValueError):
        raise SourceError(f"dataset {dataset!r}, column {column!r}: a value is not of type "
                          f"{type_}; fix the source or the column's type in the data map")\
            from None
    return str(value)


class _Syncer:
    """One dataset's incremental sync inside one transaction."""

    def __init__(self, vault: Vault, conn: sqlite3.Connection, datamap: DataMap,
                 dataset: DatasetSpec) -> None:
        self.vault, self.conn, self.datamap, self.dataset = vault, conn, datamap, dataset
        self.table = table_name(dataset.name)
        self.subjects: dict[str, tuple[int, Any]] = {}
        self.occurrences: dict[str, int] = {}
        cols = ["row_id", "sid", "row_mac"]
        for column in dataset.columns.values():
            cols.append(encrypted_column(column.name) if column.encrypted
                        else plain_column(column.name))
        self.columns = cols

    def _subject(self, key_values: list[Any]) -> tuple[int, Any]:
        ref = self.vault.keys.subject_ref(key_values)
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

    def record(self, raw: dict[str, Any]) -> tuple[str, str, list[Any]]:
        dataset = self.dataset
        key_values = [raw[c] for c in dataset.subject_key]
        if any(v is None or v == "" for v in key_values):
            raise SourceError(f"dataset {dataset.name!r}: a row has an empty subject key; "
                              "every row must name its subject")
        values = [_convert(raw[c.source_column], c.type, dataset.name, c.name)
                  for c in dataset.columns.values()]
        row_id = self._row_id([str(v) for v in key_values], values, raw)
        mac = self.vault.keys.row_mac(["v", values])
        sid, cipher = self._subject([str(v) for v in key_values])
        stored: list[Any] = [row_id, sid, mac]
        for column, value in zip(dataset.columns.values(), values, strict=True):
            if column.encrypted:
                aad = f"{dataset.name}|{column.name}|{row_id}".encode()
                stored.append(encrypt_cell(cipher, value, aad))
            else:
                stored.append(value)
        return row_id, mac, stored

    def run(self) -> SyncStats:
        existing = dict(self.conn.execute(f'SELECT row_id, row_mac FROM "{self.table}"'))
        placeholders = ", ".join("?" for _ in self.columns)
        names = ", ".join(f'"{c}"' for c in self.columns)
        insert = f'INSERT OR REPLACE INTO "{self.table}" ({names}) VALUES ({placeholders})'
        batch: list[list[Any]] = []
        inserted = updated = unchanged = 0
        seen: set[str] = set()
        for raw in read_rows(self.datamap, self.dataset):
            row_id, mac, stored = self.record(raw)
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
        return SyncStats(self.dataset.name, inserted, updated, len(gone), unchanged)


def sync(vault: Vault, datamap: DataMap, only: list[str] | None = None) -> list[SyncStats]:
    """Copy every mapped dataset (or ``only`` these) into the vault, incrementally."""
    names = only or list(datamap.datasets)
    for name in names:
        if name not in datamap.datasets:
            raise VaultError(f"dataset {name!r} is not in the data map")
    stats = []
    for name in names:
        dataset = datamap.datasets[name]
        with vault.transaction() as conn:
            _ensure_table(vault, conn, dataset)
            stats.append(_Syncer(vault, conn, datamap, dataset).run())
    return stats
