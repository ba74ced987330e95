"""The coordinator's registry: registered nodes, their health and pending revocation relays.

The one module that owns these tables. Two backends speak the same SQL: SQLite in the
coordinator's home (the embedded default) and PostgreSQL by DSN, so that several coordinator
processes behind one load balancer share one registry. Writes that decide something (who
holds a node name) run in one transaction that locks the name's row, so two coordinators
registering the same name at once cannot both win.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consent.errors import RotationError
from consent.registration import Registration, verify_registration
from consent.rotation import follow
from coordinator.errors import (
    RegistrationConflict,
    RegistrationRefused,
    RegistryError,
)

HEALTH_STATES = ("serving", "not-serving", "unreachable", "unknown")
# How old the routing snapshot (``Registry.routes``) may be. Writes by this process replace it
# at once; this bounds only how long another coordinator's write to a shared registry takes
# to be seen here.
ROUTES_MAX_AGE = 1.0

_TABLES = """
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    did TEXT NOT NULL UNIQUE,
    registration TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    region TEXT NOT NULL,
    datasets TEXT NOT NULL,
    issued TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    health TEXT NOT NULL DEFAULT 'unknown',
    last_contact TEXT NOT NULL DEFAULT '',
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS relays (
    relay_id TEXT NOT NULL,
    node_did TEXT NOT NULL,
    envelope {blob} NOT NULL,
    key_binding {blob} NOT NULL,
    created TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'pending',
    done_at TEXT NOT NULL DEFAULT '',
    receipt {blob},
    PRIMARY KEY (relay_id, node_did)
);
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class NodeRecord:
    """A registered node: its verified registration and what the coordinator saw of it."""

    registration: Registration
    registered_at: str
    health: str
    last_contact: str
    last_error: str

    @property
    def did(self) -> str:
        return self.registration.did

    @property
    def name(self) -> str:
        return self.registration.name

    def to_json(self) -> dict[str, Any]:
        r = self.registration
        return {"name": r.name, "did": r.did, "endpoint": r.endpoint, "region": r.region,
                "residency": r.residency, "profile": r.profile, "datasets": r.datasets,
                "registered_at": self.registered_at, "health": self.health,
                "last_contact": self.last_contact or None, "last_error": self.last_error or None}


@dataclass(frozen=True)
class PendingRelay:
    relay_id: str
    node_did: str
    envelope: bytes
    key_binding: bytes
    attempts: int
    last_error: str


class Registry:
    """The registry at ``target``: a SQLite file path or a ``postgresql://`` DSN."""

    def __init__(self, target: str) -> None:
        self.postgres = target.startswith(("postgresql://", "postgres://"))
        self._lock = threading.Lock()
        self._verified: dict[str, Registration] = {}  # stored statement text -> verified
        # Every node's record as last read for routing: (monotonic read time, by DID). Any
        # write of the nodes table by this process drops it and bumps the generation, so a
        # read that raced the write is not kept.
        self._routes: tuple[float, dict[str, NodeRecord]] | None = None
        self._routes_generation = 0
        self._routes_lock = threading.Lock()
        try:
            if self.postgres:
                import psycopg

                self._db: Any = psycopg.connect(target, autocommit=True, connect_timeout=10)
                self._integrity: tuple[type[Exception], ...] = (psycopg.errors.UniqueViolation,)
                self._db_errors: tuple[type[Exception], ...] = (psycopg.Error,)
            else:
                self._db = sqlite3.connect(target, isolation_level=None, check_same_thread=False,
                                           timeout=10)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._integrity = (sqlite3.IntegrityError,)
                self._db_errors = (sqlite3.Error,)
            schema = _TABLES.format(blob="BYTEA" if self.postgres else "BLOB")
            with self._tx() as cur:
                for statement in filter(str.strip, schema.split(";")):
                    cur.execute(statement)
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryError(f"cannot open the {self.backend} registry: {_brief(exc)}"
                                ) from None

    @property
    def backend(self) -> str:
        return "postgresql" if self.postgres else "sqlite"

    def close(self) -> None:
        self._db.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.postgres else statement

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One transaction; a cursor whose ``execute`` takes ``?`` placeholders."""
        with self._lock:
            cur = _Cursor(self._db.cursor(), self._sql)
            try:
                cur.execute("BEGIN" if self.postgres else "BEGIN IMMEDIATE")
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                # A failed rollback means the connection is gone: nothing was committed.
                with suppress(*self._db_errors):
                    cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()

    def _read(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                cur = self._db.cursor()
                try:
                    cur.execute(self._sql(statement), params)
                    return list(cur.fetchall())
                finally:
                    cur.close()
        except self._db_errors as exc:
            raise RegistryError(f"the registry cannot be read: {_brief(exc)}") from None

    # -- nodes ----------------------------------------------------------------------------------

    def register(self, registration: Registration, rotations: list[Any] | None = None) -> bool:
        """Store ``registration``; True when its name moved to a new key.

        Refused (nothing written): a name held by another DID unless ``rotations`` (signed
        ``consent.rotation`` statements) lead from that DID to the registering one; a DID
        registered under another name; a registration not newer than the one stored (a
        replayed old statement must not roll an endpoint back).
        """
        r = registration
        document = json.dumps(r.document, sort_keys=True)
        row = (r.did, document, r.endpoint, r.region, json.dumps(r.datasets), r.document["issued"])
        try:
            with self._tx() as cur:
                lock = " FOR UPDATE" if self.postgres else ""
                cur.execute(f"SELECT did, issued FROM nodes WHERE name = ?{lock}", (r.name,))
                held = cur.fetchone()
                cur.execute("SELECT name FROM nodes WHERE did = ? AND name <> ?", (r.did, r.name))
                other = cur.fetchone()
                if other:
                    raise RegistrationRefused(
                        f"DID {r.did} is already registered as node {other[0]!r}; register "
                        "under that name, or rotate this node to a new key")
                rotated = _check_takeover(r, held, rotations or [])
                if held is None:
                    cur.execute("INSERT INTO nodes (did, registration, endpoint, region, datasets,"
                                " issued, name, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                (*row, r.name, now_iso()))
                else:
                    cur.execute("UPDATE nodes SET did = ?, registration = ?, endpoint = ?, "
                                "region = ?, datasets = ?, issued = ?, registered_at = ?, "
                                "health = 'unknown', last_error = '' WHERE name = ?",
                                (*row, now_iso(), r.name))
            self._routes_changed()
            return rotated
        except self._integrity:
            raise RegistrationConflict(f"node {r.name!r} was registered by another request at "
                                       "the same moment; send the registration again") from None
        except self._db_errors as exc:
            raise RegistryError(f"the registry cannot be written: {_brief(exc)}") from None

    def nodes(self, *, dataset: str = "", regions: list[str] | tuple[str, ...] = ()
              ) -> list[NodeRecord]:
        """Registered nodes by name, optionally only those offering ``dataset`` in ``regions``."""
        rows = self._read("SELECT registration, registered_at, health, last_contact, last_error "
                          "FROM nodes ORDER BY name")
        records = [self._record(row) for row in rows]
        return [n for n in records
                if (not dataset or n.registration.offers(dataset))
                and (not regions or n.registration.region in regions)]

    def by_did(self, dids: list[str]) -> dict[str, NodeRecord]:
        if not dids:
            return {}
        marks = ", ".join("?" for _ in dids)
        rows = self._read("SELECT registration, registered_at, health, last_contact, last_error "
                          f"FROM nodes WHERE did IN ({marks})", tuple(dids))
        return {(record := self._record(row)).did: record for row in rows}

    def routes(self, dids: list[str]) -> dict[str, NodeRecord]:
        """``by_did`` for routing, from a snapshot of every node's record instead of a
        database read per routed call (a read also waited on the lock held while the health
        monitor's writes are flushed to disk). The snapshot is read again when it is older
        than ``ROUTES_MAX_AGE``, when a DID is not in it (a node registered at another
        coordinator is routable at once) and after any write of this process."""
        snapshot = self._routes
        if (snapshot is None or time.monotonic() - snapshot[0] > ROUTES_MAX_AGE
                or any(did not in snapshot[1] for did in dids)):
            generation = self._routes_generation
            snapshot = (time.monotonic(), {record.did: record for record in self.nodes()})
            with self._routes_lock:
                if generation == self._routes_generation:
                    self._routes = snapshot
        return {did: snapshot[1][did] for did in dids if did in snapshot[1]}

    def _routes_changed(self) -> None:
        with self._routes_lock:
            self._routes_generation += 1
            self._routes = None

    def _record(self, row: tuple[Any, ...]) -> NodeRecord:
        # Stored statements were verified on the way in; verifying again on read means a row
        # altered in the database is refused rather than routed to. A text verified once is
        # remembered (by its exact text, so an altered row is a new text, verified anew).
        registration = self._verified.get(row[0])
        if registration is None:
            try:
                registration = verify_registration(json.loads(row[0]))
            except Exception as exc:
                raise RegistryError(f"a registry row does not verify any more ({_brief(exc)});"
                                    " the node must register again") from None
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[row[0]] = registration
        return NodeRecord(registration, row[1], row[2], row[3], row[4])

    def set_health(self, did: str, health: str, error: str = "") -> None:
        """Record a health check (or a routing failure); last_contact moves on success only."""
        if health not in HEALTH_STATES:
            raise ValueError(f"unknown health state {health!r}")
        try:
            with self._tx() as cur:
                if health == "serving":
                    cur.execute("UPDATE nodes SET health = ?, last_contact = ?, last_error = '' "
                                "WHERE did = ?", (health, now_iso(), did))
                else:
                    cur.execute("UPDATE nodes SET health = ?, last_error = ? WHERE did = ?",
                                (health, error[:300], did))
            self._routes_changed()
        except self._db_errors as exc:
            raise RegistryError(f"the registry cannot be written: {_brief(exc)}") from None

    # -- revocation relays ----------------------------------------------------------------------

    def add_relay(self, relay_id: str, targets: list[tuple[str, bytes, bytes]]) -> None:
        """Keep a relay's sealed envelopes (node DID, envelope, key binding) until delivered."""
        try:
            with self._tx() as cur:
                for did, envelope, binding in targets:
                    cur.execute("INSERT INTO relays (relay_id, node_did, envelope, key_binding, "
                                "created) VALUES (?, ?, ?, ?, ?)",
                                (relay_id, did, envelope, binding, now_iso()))
        except self._db_errors as exc:
            raise RegistryError(f"the relay cannot be stored: {_brief(exc)}") from None

    def pending_relays(self, relay_id: str | None = None) -> list[PendingRelay]:
        where = "state = 'pending'" + (" AND relay_id = ?" if relay_id else "")
        rows = self._read("SELECT relay_id, node_did, envelope, key_binding, attempts, "
                          f"last_error FROM relays WHERE {where} ORDER BY created, node_did",
                          (relay_id,) if relay_id else ())
        return [PendingRelay(r[0], r[1], bytes(r[2]), bytes(r[3]), r[4], r[5]) for r in rows]

    def relay_done(self, relay_id: str, did: str, state: str, receipt: bytes = b"",
                   error: str = "") -> bool:
        """Close one delivery as ``delivered`` (with the node's sealed receipt) or
        ``refused`` (the node read it and said no); False if it was closed already (another
        coordinator got there first)."""
        if state not in ("delivered", "refused"):
            raise ValueError(f"unknown relay state {state!r}")
        try:
            with self._tx() as cur:
                cur.execute("UPDATE relays SET state = ?, done_at = ?, receipt = ?, attempts = "
                            "attempts + 1, last_error = ? WHERE relay_id = ? AND node_did = ? "
                            "AND state = 'pending'",
                            (state, now_iso(), receipt, error[:300], relay_id, did))
                return bool(cur.rowcount)
        except self._db_errors as exc:
            raise RegistryError(f"the registry cannot be written: {_brief(exc)}") from None

    def relay_failed(self, relay_id: str, did: str, error: str) -> None:
        """One more attempt that did not reach the node; it stays pending."""
        try:
            with self._tx() as cur:
                cur.execute("UPDATE relays SET attempts = attempts + 1, last_error = ? "
                            "WHERE relay_id = ? AND node_did = ? AND state = 'pending'",
                            (error[:300], relay_id, did))
        except self._db_errors as exc:
            raise RegistryError(f"the registry cannot be written: {_brief(exc)}") from None

    def relay_states(self, relay_id: str) -> dict[str, tuple[str, bytes, str]]:
        """{node DID: (state, receipt, last error)} of one relay."""
        rows = self._read("SELECT node_did, state, receipt, last_error FROM relays "
                          "WHERE relay_id = ?", (relay_id,))
        return {r[0]: (r[1], bytes(r[2] or b""), r[3]) for r in rows}


class _Cursor:
    """A DB-API cursor taking ``?`` placeholders on both backends."""

    def __init__(self, cursor: Any, sql: Any) -> None:
        self._cursor, self._sqlf = cursor, sql

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        self._cursor.execute(self._sqlf(statement), params)

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cursor.fetchone()

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def close(self) -> None:
        self._cursor.close()


def _check_takeover(registration: Registration, held: tuple[Any, ...] | None,
                    rotations: list[Any]) -> bool:
    """True for a rotation to a new key; RegistrationRefused when the name is not ours."""
    if held is None:
        return False
    old_did, old_issued = held
    if old_did == registration.did:
        if registration.document["issued"] <= old_issued:
            raise RegistrationRefused(
                f"node {registration.name!r} holds a registration issued at {old_issued}; "
                "sign a new registration (an older or replayed one is refused)")
        return False
    try:
        follow(old_did, registration.did, rotations)
    except RotationError:
        raise RegistrationRefused(
            f"node name {registration.name!r} is registered by another key ({old_did}); a new "
            "key takes it over only with key rotations signed by the old key (sov-node "
            "rotate-key on the node that holds it)") from None
    return True


def _brief(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
