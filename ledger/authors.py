"""The ledger's authors registry: the parties (nodes, the coordinator) allowed to write entries.

One SQLite file in the ledger home (``HOME/authors.db``), owned by this module. The operator
edits it with ``sov-ledger authors add|list|remove`` while the service runs; the service
re-reads it when SQLite says another connection changed it (``PRAGMA data_version``), so a
change applies to the next append without a restart and costs one pragma per batch.

A removed author stays in the file with its removal time: the service no longer accepts its
entries, while ``authors list --json`` (what auditors pass to ``sov-audit verify --authors``)
still shows that it was registered, and for which kinds, when it wrote its earlier entries.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consent.did import resolve
from consent.errors import DIDError
from consent.utctime import utc_text
from ledger.errors import AuthorsError
from ledger.events import EVENT_TYPES

AUTHORS = "authors.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS authors (
    did TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    kinds TEXT NOT NULL,      -- comma-separated entry kinds it may write (or endorse)
    added TEXT NOT NULL,
    removed TEXT              -- NULL while registered
);
"""
ROLES = ("node", "coordinator")
# What each role writes unless --kind says otherwise: a node its access heads and erasure
# proofs, and endorses its customers' grants and revocations; the coordinator its models and
# the revocations it relays.
DEFAULT_KINDS = {
    "node": ("access_head", "erasure", "grant", "revocation"),
    "coordinator": ("model", "revocation", "relay"),
}
FILE_FORMAT = "sovereign-fabric-ledger-authors"
_NAME = re.compile(r"[\w .,:'()&/-]{1,80}")


@dataclass(frozen=True)
class Author:
    did: str
    name: str
    role: str
    kinds: frozenset[str]
    added: str
    removed: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"did": self.did, "name": self.name, "role": self.role,
                "kinds": sorted(self.kinds), "added": self.added, "removed": self.removed}

    @classmethod
    def from_json(cls, doc: Any) -> Author:
        if not isinstance(doc, dict):
            raise AuthorsError("each author must be a JSON object")
        try:
            return cls(_did(doc["did"]), _name(doc["name"]), _role(doc["role"]),
                       _kind_set(doc["kinds"]), str(doc["added"]), doc.get("removed"))
        except KeyError as exc:
            raise AuthorsError(f"an author lacks the field {exc.args[0]!r}") from exc


def _did(did: Any) -> str:
    try:
        resolved = resolve(did)
    except DIDError as exc:
        raise AuthorsError(f"the author must be a did:key: {exc}") from exc
    if resolved.ed25519 is None:
        raise AuthorsError("the author must be an Ed25519 did:key (did:key:z6Mk...)")
    return str(did)


def _name(name: Any) -> str:
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise AuthorsError("the name must be 1 to 80 letters, digits, spaces or .,:'()&/-")
    return name


def _role(role: Any) -> str:
    if role not in ROLES:
        raise AuthorsError(f"the role must be one of {', '.join(ROLES)}")
    return str(role)


def _kind_set(kinds: Any) -> frozenset[str]:
    if not isinstance(kinds, list | tuple) or not kinds:
        raise AuthorsError(f"give at least one entry kind: {', '.join(EVENT_TYPES)}")
    unknown = sorted(set(kinds) - set(EVENT_TYPES))
    if unknown:
        raise AuthorsError(f"unknown entry kind {unknown[0]!r}: use {', '.join(EVENT_TYPES)}")
    return frozenset(kinds)


def _now() -> str:
    return utc_text(datetime.now(UTC))


class AuthorRegistry:
    """The authors of one ledger home. Thread-safe; ``current()`` is cheap when unchanged."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise AuthorsError(f"cannot open the authors registry {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        self._version: int | None = None
        self._active: dict[str, Author] = {}

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AuthorRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, did: str, name: str, role: str, kinds: list[str] | None = None) -> Author:
        """Register ``did``; refused while it is registered (remove it first to change it)."""
        role = _role(role)
        author = Author(_did(did), _name(name), role,
                        _kind_set(list(kinds) if kinds else list(DEFAULT_KINDS[role])), _now())
        with self._lock:
            row = self._db.execute("SELECT removed FROM authors WHERE did = ?",
                                   (author.did,)).fetchone()
            if row is not None and row[0] is None:
                raise AuthorsError(f"{author.did} is registered already: remove it first to "
                                   "change its name, role or kinds")
            self._db.execute(
                "INSERT OR REPLACE INTO authors VALUES (?, ?, ?, ?, ?, NULL)",
                (author.did, author.name, author.role, ",".join(sorted(author.kinds)),
                 author.added))
            self._version = None  # data_version moves only for other connections' writes
        return author

    def remove(self, did: str) -> Author:
        """Stop accepting entries by ``did`` (its past entries stay in the log)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE authors SET removed = ? WHERE did = ? AND removed IS NULL", (_now(), did))
            if cursor.rowcount == 0:
                raise AuthorsError(f"{did} is not a registered author: 'sov-ledger authors list' "
                                   "shows them")
            self._version = None
        return next(a for a in self.all() if a.did == did)

    def all(self) -> list[Author]:
        """Every author ever registered, removed ones included, by time added."""
        with self._lock:
            rows = self._db.execute(
                "SELECT did, name, role, kinds, added, removed FROM authors ORDER BY added, did"
            ).fetchall()
        return [Author(d, n, r, frozenset(k.split(",")), a, x) for d, n, r, k, a, x in rows]

    def current(self) -> dict[str, Author]:
        """The registered authors by DID, re-read only when the file changed."""
        with self._lock:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            changed = version != self._version
        if changed:
            active = {a.did: a for a in self.all() if a.removed is None}
            with self._lock:
                self._active, self._version = active, version
        return self._active

    def to_json(self) -> dict[str, Any]:
        return {"format": FILE_FORMAT, "version": 1, "authors": [a.to_json() for a in self.all()]}


def load_authors_file(path: Path) -> dict[str, Author]:
    """Every author in an ``authors list --json`` file (removed ones too), by DID."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuthorsError(f"cannot read the authors file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise AuthorsError(f"the authors file {path} is not JSON") from exc
    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
        raise AuthorsError(f"{path} is not an authors file: write one with "
                           "'sov-ledger authors list --json'")
    authors = doc.get("authors")
    if not isinstance(authors, list):
        raise AuthorsError(f"{path} holds no list of authors")
    return {a.did: a for a in map(Author.from_json, authors)}
