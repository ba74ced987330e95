"""The node's activity database (issue 15): ``HOME/activity.sqlite``, beside the vault, holding
every table a query writes — the access log and its sets, replay nonces, released answer
sets, the privacy-debit journal and per-grant counters. Each table keeps its one owning module
(``agent_node.accesslog``, ``nonces``, ``releases``, ``spend``, ``grantstore``); this module
owns the file: where it is, how it is attached, and moving the tables of an older home in.

Why a second file: a query's durable commit then writes this small file's WAL only. SQLite
checks a database's WAL header when a read transaction starts and drops its page cache when
another connection committed to that database; with the access log in ``vault.sqlite`` every
answer made every other connection re-read the dataset pages it had cached. Now the vault
file changes only when data, grants or bindings do.

Every vault connection attaches it as schema ``activity`` (unqualified table names resolve to
it, since the vault holds none of these tables). A write transaction (``BEGIN IMMEDIATE``)
takes the write locks of both files, so the consent checks a query makes in its write phase
still exclude a concurrent revocation, and a commit that changed only activity tables writes
only this file. Budget check, debit and access event stay in one transaction of one file.
WAL, ``synchronous=FULL`` and ``secure_delete`` as the vault.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from agent_node import locations

FILE = "activity.sqlite"
SCHEMA = "activity"


def path_beside(vault_path: Path) -> Path:
    """The activity database of the vault at ``vault_path`` (the same folder)."""
    return Path(vault_path).with_name(FILE)


def attach(conn: sqlite3.Connection, path: Path, *, cache_kib: int, mmap_bytes: int) -> None:
    """Attach the activity database to a vault connection, with the vault's durability."""
    conn.execute(f"ATTACH DATABASE ? AS {SCHEMA}", (str(path),))
    conn.execute(f"PRAGMA {SCHEMA}.journal_mode=WAL")
    conn.execute(f"PRAGMA {SCHEMA}.synchronous=FULL")
    conn.execute(f"PRAGMA {SCHEMA}.secure_delete=ON")
    conn.execute(f"PRAGMA {SCHEMA}.cache_size=-{cache_kib}")
    conn.execute(f"PRAGMA {SCHEMA}.mmap_size={mmap_bytes}")


def tables_in(conn: sqlite3.Connection, db: str, names: Iterable[str]) -> list[str]:
    """Those of ``names`` that are tables of schema ``db``, sorted."""
    wanted = set(names)
    return sorted(r[0] for r in conn.execute(
        f"SELECT name FROM {db}.sqlite_master WHERE type = 'table'") if r[0] in wanted)


def _columns(conn: sqlite3.Connection, db: str, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f'PRAGMA {db}.table_info("{table}")')]


def copy(conn: sqlite3.Connection, source: str, target: str, tables: Iterable[str]) -> None:
    """Replace the rows of each table in schema ``target`` by those of the same table in
    ``source`` (columns both have; the target's tables exist already). Inside the caller's
    transaction."""
    for table in tables:
        have = set(_columns(conn, source, table))
        columns = ", ".join(f'"{c}"' for c in _columns(conn, target, table) if c in have)
        conn.execute(f'DELETE FROM {target}."{table}"')
        conn.execute(f'INSERT INTO {target}."{table}" ({columns}) '
                     f'SELECT {columns} FROM {source}."{table}"')


def migrate(conn: sqlite3.Connection, tables: Iterable[str]) -> list[str]:
    """Move those of ``tables`` still in the vault (a home from before this file) into the
    activity database, whose tables the owners created already; which were moved.

    Two transactions, each writing one file: the copy (repeatable: it replaces what an
    interrupted earlier copy left), then the vault's tables dropped. A crash in between
    leaves the vault's tables, so the next start copies again; no process serves before its
    own start finished both. Several processes starting at once take turns (write locks)."""
    tables = list(tables)
    if not tables_in(conn, "main", tables):
        return []  # the usual case: no write lock taken
    moved: list[str] = []
    for step in ("copy", "drop"):
        conn.execute("BEGIN IMMEDIATE")
        try:
            legacy = tables_in(conn, "main", tables)
            if step == "copy":
                copy(conn, "main", SCHEMA, legacy)
                moved = legacy
            else:
                for table in legacy:
                    conn.execute(f'DROP TABLE main."{table}"')
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return moved


_OWNER = "agent_node.activity"
locations.file("activity", _OWNER, FILE, "the tables a query writes (access log, released "
               "sets, replay nonces, debit journal, grant usage) in database pages; deleted "
               "content is overwritten (secure_delete)", "delete")
locations.file("activity-wal", _OWNER, FILE + "-wal", "recent page versions; checkpointed and "
               "truncated by an erasure", "delete")
locations.file("activity-shm", _OWNER, FILE + "-shm", "the WAL index (page numbers)", "none")
locations.file("activity-journal", _OWNER, FILE + "-journal", "a rollback journal, if any",
               "delete")
