"""The record of answer sets released in threshold mode, for the query-set overlap control
(``agent_node.engine``): the owner of the ``released_sets`` table (its schema and every
statement on it).

Each row is one (requester, dataset) answer set: its size, the SHA-256 of its sorted packed
(sid, keyed row fingerprint) pairs and those pairs, zlib-compressed. The table is
append-only: a release is final.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator

from agent_node import locations

#: ``{db}``: the schema the table lives in.
SCHEMA = """
CREATE TABLE IF NOT EXISTS {db}.released_sets (
  id INTEGER PRIMARY KEY, requester TEXT NOT NULL, dataset TEXT NOT NULL, size INTEGER NOT NULL,
  digest TEXT NOT NULL, members BLOB NOT NULL, released_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS {db}.released_lookup ON released_sets(requester, dataset, size);
CREATE INDEX IF NOT EXISTS {db}.released_digest ON released_sets(requester, dataset, digest);
"""
TABLES = ("released_sets",)


def ensure(conn: sqlite3.Connection, db: str = "main") -> None:
    for statement in SCHEMA.format(db=db).split(";"):
        if statement.strip():
            conn.execute(statement)


def released(conn: sqlite3.Connection, requester: str, dataset: str,
             digests: Iterable[str]) -> set[str]:
    """Those of ``digests`` already released to ``requester`` on ``dataset``."""
    return {r[0] for r in conn.execute(
        "SELECT digest FROM released_sets WHERE requester = ? AND dataset = ? AND "
        "digest IN (SELECT value FROM json_each(?))",
        (requester, dataset, json.dumps(sorted(set(digests)))))}


def is_released(conn: sqlite3.Connection, requester: str, dataset: str, digest: str) -> bool:
    return conn.execute("SELECT 1 FROM released_sets WHERE requester = ? AND dataset = ? "
                        "AND digest = ?", (requester, dataset, digest)).fetchone() is not None


def near(conn: sqlite3.Connection, requester: str, dataset: str, low: int, high: int
         ) -> Iterator[bytes]:
    """The packed members of every set released to ``requester`` on ``dataset`` whose size
    lies in [low, high]."""
    for (members,) in conn.execute(
            "SELECT members FROM released_sets WHERE requester = ? AND dataset = ? "
            "AND size BETWEEN ? AND ?", (requester, dataset, low, high)):
        yield members


def record(conn: sqlite3.Connection, requester: str, dataset: str, size: int, digest: str,
           members: bytes, at: str) -> None:
    """Record a set as released, inside the write transaction that releases it."""
    conn.execute("INSERT INTO released_sets (requester, dataset, size, digest, members, "
                 "released_at) VALUES (?, ?, ?, ?, ?, ?)",
                 (requester, dataset, size, digest, members, at))


locations.table("released_sets", "agent_node.releases", "opaque (sid, keyed row fingerprint) "
                "pairs of released answer sets, for the overlap control", "keep-opaque",
                database="activity")
