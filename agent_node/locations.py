"""The node's data-location registry (issue 13): every table of the vault and every file of
the node home, the one module that owns it (its schema, upgrades and SQL), what it holds about
a customer and how an erasure treats it.

Each owning module registers its own locations when it is imported (``register``); the
erasure (``agent_node.erasure``) runs the ``erase`` function of every table location inside
one transaction and scans every file location's raw bytes afterwards. A table or file that
no module registered is a finding: ``unregistered_tables`` / ``unregistered_files`` name them,
and the tests fail on any that holds a customer's marker, so a future store must say where
it keeps data before it can keep any.

Treatments (``Location.erasure``):

- ``delete``: the customer's rows are deleted (the vault runs with ``secure_delete``, and
  the erasure checkpoints and truncates the WAL afterwards);
- ``redact``: rows that cannot go without breaking a hash chain keep their digests and lose
  their content;
- ``destroy-key``: the customer's wrapped SM4 data key is destroyed, so every copy of their
  encrypted cells (backups included) stays unreadable; the opaque subject reference stays
  only where other customers' Merkle proofs need it;
- ``keep-opaque``: holds only opaque values (row ids, keyed fingerprints, random grant ids,
  salted commitments whose salt the erasure destroys) that other records need;
- ``none``: holds nothing about customers.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from consent.sm import sm3

Treatment = Literal["delete", "redact", "destroy-key", "keep-opaque", "none"]
TREATMENTS = ("delete", "redact", "destroy-key", "keep-opaque", "none")


class LocationError(Exception):
    """A location is declared twice or inconsistently."""


@dataclass(frozen=True)
class Customer:
    """Whom an erasure is for, as the vault knows them: the wallet DID, the subjects bound
    to it (row ids and opaque references) and the grants it issued here."""

    did: str
    sids: tuple[int, ...]
    refs: tuple[str, ...]
    grant_ids: tuple[str, ...]


@dataclass(frozen=True)
class Erased:
    """What one location destroyed: rows, and the SM3 digest of their former content."""

    rows: int
    digest: str
    kept: int = 0  # rows kept, opaque (e.g. subject references other proofs need)


Eraser = Callable[[sqlite3.Connection, Customer], Erased]


@dataclass(frozen=True)
class Location:
    """One table of the vault (``kind`` "table", ``pattern`` a table name, ``*`` allowed) or
    one file of the node home (``kind`` "file", ``pattern`` a glob relative to the home)."""

    name: str
    owner: str
    kind: Literal["table", "file"]
    pattern: str
    holds: str  # what it holds about a customer, in words ("" for nothing)
    erasure: Treatment
    erase: Eraser | None = field(default=None, compare=False)
    #: A table's database: the vault file, or the activity file of the tables a query writes
    #: (``agent_node.activity``; an erasure commits those first, in their own transaction).
    database: Literal["vault", "activity"] = "vault"

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


_REGISTRY: dict[str, Location] = {}


def register(location: Location) -> Location:
    """Declare a location (idempotent for the same declaration, refused for a clash)."""
    if location.erasure not in TREATMENTS:
        raise LocationError(f"location {location.name!r}: unknown treatment")
    if location.kind == "table" and location.erasure in ("delete", "redact", "destroy-key") \
            and location.erase is None:
        raise LocationError(f"location {location.name!r} holds customer data but declares "
                            "no erase function")
    known = _REGISTRY.get(location.name)
    if known is not None and known != location:
        raise LocationError(f"location {location.name!r} is declared twice, differently")
    _REGISTRY[location.name] = location
    return location


def table(name: str, owner: str, holds: str, erasure: Treatment,
          erase: Eraser | None = None, pattern: str | None = None,
          database: Literal["vault", "activity"] = "vault") -> Location:
    # Named "vault.*" wherever the table lives: proofs and backups name locations this way.
    return register(Location(f"vault.{name}", owner, "table", pattern or name, holds, erasure,
                             erase, database))


def file(name: str, owner: str, pattern: str, holds: str, erasure: Treatment) -> Location:
    return register(Location(f"file.{name}", owner, "file", pattern, holds, erasure))


def locations() -> list[Location]:
    """Every registered location, once the owning modules are imported."""
    _import_owners()
    return sorted(_REGISTRY.values(), key=lambda loc: loc.name)


def _import_owners() -> None:
    # The owners register on import; importing them here makes the list complete wherever
    # it is read from (a CLI, a test) without a central list to forget.
    import agent_node.accesslog
    import agent_node.activity
    import agent_node.backup
    import agent_node.erasure
    import agent_node.flnode
    import agent_node.grantstore
    import agent_node.home
    import agent_node.importstore
    import agent_node.nonces
    import agent_node.releases
    import agent_node.scoring
    import agent_node.spend
    import agent_node.trainingstore
    import agent_node.vault  # noqa: F401


def table_location(name: str) -> Location | None:
    for location in locations():
        if location.kind == "table" and location.matches(name):
            return location
    return None


def file_location(relative: str) -> Location | None:
    for location in locations():
        if location.kind == "file" and location.matches(relative):
            return location
    return None


def vault_tables(conn: sqlite3.Connection) -> list[str]:
    """Every table of the vault connection's databases (the vault and the attached
    activity database)."""
    names: set[str] = set()
    for _, schema, _ in conn.execute("PRAGMA database_list").fetchall():
        if schema != "temp":
            names.update(r[0] for r in conn.execute(
                f"SELECT name FROM \"{schema}\".sqlite_master WHERE type = 'table' AND name "
                "NOT LIKE 'sqlite_%'"))
    return sorted(names)


def unregistered_tables(conn: sqlite3.Connection) -> list[str]:
    return [t for t in vault_tables(conn) if table_location(t) is None]


def home_files(home: Path) -> list[str]:
    """Every regular file under the node home, relative, sorted."""
    home = Path(home)
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


def unregistered_files(home: Path) -> list[str]:
    return [f for f in home_files(home) if file_location(f) is None]


def digest_rows(rows: Iterable[Iterable[Any]]) -> str:
    """SM3 (hex) of rows as canonical JSON, sorted, blobs as hex: what was destroyed."""
    def cell(value: Any) -> Any:
        return value.hex() if isinstance(value, bytes | memoryview) else value

    listed = sorted(json.dumps([cell(v) for v in row], sort_keys=True, default=str)
                    for row in rows)
    return sm3(("\n".join(listed)).encode()).hex()


EMPTY_DIGEST = digest_rows([])


def delete_rows(conn: sqlite3.Connection, table_name: str, where: str,
                params: tuple[Any, ...]) -> Erased:
    """Delete ``table_name``'s rows matching ``where``; their count and digest."""
    rows = conn.execute(f'SELECT * FROM "{table_name}" WHERE {where}', params).fetchall()
    if rows:
        conn.execute(f'DELETE FROM "{table_name}" WHERE {where}', params)
    return Erased(len(rows), digest_rows(rows))


def json_list(values: Iterable[Any]) -> str:
    return json.dumps(list(values))


def fingerprint(value: str) -> str:
    """A non-reversible label for a needle in test output (never the value)."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]
