"""Which ``access_head`` entries name a subject commitment: the ledger's one secondary index.

A wallet checks a node's access log against the heads the node anchored, and must find those
heads without asking the node (which could leave some out): it asks the ledger for the
``access_head`` entries whose ``subject_commitments`` hold its commitment
(``LedgerService.FindAccessHeads``). This module owns the table behind that query::

    head_subjects(commitment BLOB, idx INTEGER, PRIMARY KEY (commitment, idx)) WITHOUT ROWID

written in the same transaction as the entries (``ledger.log.Log._commit``), so it is never
behind the log, and derived from them alone: a database from before it is indexed once, when
the log opens. Only access heads are indexed (a few per node per minute, not every grant), so
the random-key writes that made an index by entry hash too costly stay few.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import orjson

SCHEMA = ("CREATE TABLE IF NOT EXISTS head_subjects (commitment BLOB NOT NULL, "
          "idx INTEGER NOT NULL, PRIMARY KEY (commitment, idx)) WITHOUT ROWID")
# Entries are RFC 8785 JSON: no whitespace, so an access head always holds this exact text.
MARKER = b'"type":"access_head"'
# A head without this key names no subject: most heads, not worth parsing.
LISTED = b'"subject_commitments":'
MAX_FIND = 1000


def rows(entries: Sequence[bytes], start: int) -> list[tuple[bytes, int]]:
    """(commitment, index) rows for entries ``start, start + 1, ...``."""
    found = []
    for offset, entry in enumerate(entries):
        if MARKER not in entry or LISTED not in entry:
            continue
        listed = orjson.loads(entry).get("subject_commitments") or []
        found += [(bytes.fromhex(c), start + offset) for c in set(listed)]
    return found


def ensure(db: sqlite3.Connection) -> None:
    """Create the table; index an older database's heads once, in one transaction."""
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                        "AND name = 'head_subjects'").fetchone()
    if exists:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(SCHEMA)
        for idx, entry in db.execute("SELECT idx, entry FROM entries WHERE instr(entry, ?) > 0 "
                                     "ORDER BY idx", (MARKER,)).fetchall():
            db.executemany("INSERT OR IGNORE INTO head_subjects VALUES (?, ?)",
                           rows([bytes(entry)], idx))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def add(db: sqlite3.Connection, entries: Sequence[bytes], start: int) -> None:
    """Index new entries, inside the caller's transaction."""
    found = rows(entries, start)
    if found:
        db.executemany("INSERT OR IGNORE INTO head_subjects VALUES (?, ?)", found)


def find(db: sqlite3.Connection, commitment: bytes, after_index: int, limit: int,
         size: int) -> list[int]:
    """Indexes (>= ``after_index``, < ``size``) of the heads naming ``commitment``."""
    return [r[0] for r in db.execute(
        "SELECT idx FROM head_subjects WHERE commitment = ? AND idx >= ? AND idx < ? "
        "ORDER BY idx LIMIT ?", (commitment, after_index, size, limit))]
