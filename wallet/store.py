"""The wallet's local store: an SQLite database (one file, 0600) beside the keystore.

It keeps what the customer must never lose even when a node is unreachable: every signed grant
(with its delivery status, so an undelivered grant is retried, never re-signed), every signed
revocation, the nodes' verified ``NodeInfo`` and CA certificates, the last known grant status,
cached access events, and the optional ledger configuration. Every write is one SQLite
transaction, so a crash leaves either the old or the new state, never a half-written one.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consent.utctime import parse_utc, utc_text
from wallet.errors import StoreDamaged

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    address TEXT PRIMARY KEY, ca_pem TEXT NOT NULL, did TEXT, name TEXT, region TEXT,
    residency TEXT, profile TEXT, k_threshold INTEGER, max_ttl_hours REAL, info_at TEXT
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY, digest TEXT NOT NULL, credential TEXT NOT NULL,
    node_address TEXT NOT NULL, node_did TEXT NOT NULL, requester TEXT NOT NULL,
    purpose TEXT NOT NULL, scopes TEXT NOT NULL, issued TEXT NOT NULL, expires TEXT NOT NULL,
    max_queries INTEGER, dp_epsilon REAL,
    delivery TEXT NOT NULL DEFAULT 'pending', delivery_error TEXT, delivered_at TEXT,
    last_status TEXT, status_at TEXT, revoked_at TEXT, ledger_receipt TEXT
);
CREATE TABLE IF NOT EXISTS revocations (
    grant_id TEXT PRIMARY KEY, document TEXT NOT NULL, issued TEXT NOT NULL,
    delivery TEXT NOT NULL DEFAULT 'pending', delivery_error TEXT, confirmed_at TEXT,
    ledger_receipt TEXT
);
CREATE TABLE IF NOT EXISTS access_events (
    node_address TEXT NOT NULL, seq INTEGER NOT NULL, time TEXT NOT NULL, event TEXT NOT NULL,
    verified INTEGER NOT NULL, ledger_verified INTEGER, fetched_at TEXT NOT NULL,
    ledger_status TEXT, ledger_detail TEXT,
    PRIMARY KEY (node_address, seq)
);
CREATE TABLE IF NOT EXISTS erasures (
    node_did TEXT PRIMARY KEY, node_address TEXT NOT NULL, request TEXT NOT NULL,
    requested_at TEXT NOT NULL, receipt TEXT, erased_at TEXT
);
CREATE TABLE IF NOT EXISTS migrations (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, source_did TEXT NOT NULL, target TEXT NOT NULL,
    target_did TEXT NOT NULL, state TEXT NOT NULL, export TEXT, request TEXT,
    import_receipt TEXT, note TEXT, started_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
"""

# Columns added after the first release: (table, column, type). Added in place on open.
MIGRATIONS = (
    ("access_events", "ledger_status", "TEXT"),
    ("access_events", "ledger_detail", "TEXT"),
    ("revocations", "ledger_receipt", "TEXT"),
    # The customer's ledger entry with its node's endorsement, ready to append (ledger.customer)
    ("grants", "ledger_entry", "TEXT"),
    ("revocations", "ledger_entry", "TEXT"),
    ("nodes", "retired_dids", "TEXT"),  # JSON list: DIDs the node rotated away from
)

PENDING = "pending"
DELIVERED = "delivered"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime) -> str:
    # Fixed microsecond precision keeps the text order equal to the time order (SQL compares).
    return utc_text(value, micro=True)


def from_iso(value: str) -> datetime:
    return parse_utc(value)


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


@dataclass(frozen=True)
class NodeRecord:
    address: str
    ca_pem: bytes
    did: str | None
    name: str | None
    region: str | None
    residency: str | None
    profile: str | None
    k_threshold: int | None
    max_ttl_hours: float | None
    info_at: datetime | None
    retired_dids: tuple[str, ...] = ()  # earlier DIDs of this node, oldest first


@dataclass(frozen=True)
class GrantRecord:
    id: str
    digest: str
    credential: dict[str, Any]
    node_address: str
    node_did: str
    requester: str
    purpose: str
    scopes: tuple[str, ...]
    issued: datetime
    expires: datetime
    max_queries: int | None
    dp_epsilon: float | None
    delivery: str
    delivery_error: str | None
    delivered_at: datetime | None
    last_status: dict[str, Any] | None
    status_at: datetime | None
    revoked_at: datetime | None
    ledger_receipt: dict[str, Any] | None
    ledger_entry: dict[str, Any] | None = None  # endorsed by the node, ready to append


@dataclass(frozen=True)
class RevocationRecord:
    grant_id: str
    document: dict[str, Any]
    issued: datetime
    delivery: str
    delivery_error: str | None
    confirmed_at: datetime | None
    ledger_receipt: dict[str, Any] | None = None
    ledger_entry: dict[str, Any] | None = None  # endorsed by the node, ready to append


@dataclass(frozen=True)
class AccessRecord:
    node_address: str
    seq: int
    time: datetime
    event: dict[str, Any]
    verified: bool
    ledger_verified: bool | None
    ledger_status: str | None = None  # verified | failed | not-anchored | no-ledger
    ledger_detail: str | None = None


def _opt_time(value: str | None) -> datetime | None:
    return None if value is None else from_iso(value)


class WalletStore:
    """Typed access to ``wallet.db``; one short transaction per write."""

    FILENAME = "wallet.db"

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / self.FILENAME
        created = not self.path.exists()
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        if created:
            # The store names who the customer granted what: only the owner may read it.
            os.chmod(self.path, 0o600)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # Deleted content (a migration's sealed export, say) is zeroed, not left in free
            # pages of the file.
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.executescript(SCHEMA)
            self._migrate()
            self._scrub_exports()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreDamaged(
                f"{self.path} is damaged or not a wallet database ({exc}); restore it from a "
                "backup (your keys are safe in keystore.json)"
            ) from None

    def _migrate(self) -> None:
        for table, column, kind in MIGRATIONS:
            names = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in names:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _scrub_exports(self) -> None:
        """A wallet of an older release kept each finished migration's export, the
        customer's data, in clear: keep only its digest (what the receipts need), and
        checkpoint so that no old page of the file or its WAL still holds the data."""
        from consent.canonical import canonical_sha256

        rows = self._db.execute(
            "SELECT id, export FROM migrations WHERE state IN ('imported', 'done', "
            "'rolled-back') AND export IS NOT NULL AND json_extract(export, '$.digest') IS "
            "NULL").fetchall()
        if not rows:
            return
        with self.transaction() as db:
            db.executemany("UPDATE migrations SET export = ? WHERE id = ?", [
                (json.dumps({"digest": canonical_sha256(json.loads(row["export"]))}), row["id"])
                for row in rows])
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # settings -------------------------------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO settings(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # nodes ----------------------------------------------------------------------------------

    def put_node(self, address: str, ca_pem: bytes) -> None:
        """Remember (or replace) the CA certificate that authenticates ``address``."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO nodes(address, ca_pem) VALUES (?, ?) "
                "ON CONFLICT(address) DO UPDATE SET ca_pem = excluded.ca_pem",
                (address, ca_pem.decode("ascii")),
            )

    def put_node_info(self, address: str, info: Any, retired: list[str] | None = None) -> None:
        """Record a verified ``NodeInfo`` (did, name, region, residency, ...); ``retired``
        are DIDs the node held before (the caller checked the change of DID)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE nodes SET did = ?, name = ?, region = ?, residency = ?, profile = ?, "
                "k_threshold = ?, max_ttl_hours = ?, info_at = ?, "
                "retired_dids = coalesce(?, retired_dids) WHERE address = ?",
                (
                    info.did, info.name, info.region, info.residency, info.profile,
                    info.k_threshold, info.max_ttl_hours, iso(utcnow()),
                    None if retired is None else json.dumps(retired), address,
                ),
            )

    def node(self, address: str) -> NodeRecord | None:
        row = self._db.execute("SELECT * FROM nodes WHERE address = ?", (address,)).fetchone()
        return None if row is None else self._node(row)

    def nodes(self) -> list[NodeRecord]:
        rows = self._db.execute("SELECT * FROM nodes ORDER BY address").fetchall()
        return [self._node(row) for row in rows]

    @staticmethod
    def _node(row: sqlite3.Row) -> NodeRecord:
        return NodeRecord(
            address=row["address"], ca_pem=row["ca_pem"].encode("ascii"), did=row["did"],
            name=row["name"], region=row["region"], residency=row["residency"],
            profile=row["profile"], k_threshold=row["k_threshold"],
            max_ttl_hours=row["max_ttl_hours"], info_at=_opt_time(row["info_at"]),
            retired_dids=tuple(_loads(row["retired_dids"]) or ()),
        )

    # grants ---------------------------------------------------------------------------------

    def add_grant(self, grant: Any, node_address: str) -> None:
        """Save a freshly signed grant (a ``consent.grants.Grant``) as pending delivery."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO grants(id, digest, credential, node_address, node_did, requester, "
                "purpose, scopes, issued, expires, max_queries, dp_epsilon, delivery) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    grant.id, grant.digest, json.dumps(grant.credential), node_address,
                    grant.nodes[0], grant.requester, grant.purpose,
                    json.dumps(sorted(str(s) for s in grant.scopes)), iso(grant.issued),
                    iso(grant.expires), grant.max_queries, grant.dp_epsilon, PENDING,
                ),
            )

    def mark_grant_delivered(self, grant_id: str, when: datetime) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE grants SET delivery = ?, delivery_error = NULL, delivered_at = ? "
                "WHERE id = ?",
                (DELIVERED, iso(when), grant_id),
            )

    def mark_grant_failed(self, grant_id: str, error: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE grants SET delivery_error = ? WHERE id = ?", (error, grant_id))

    def set_grant_status(self, grant_id: str, status: dict[str, Any], when: datetime) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE grants SET last_status = ?, status_at = ? WHERE id = ?",
                (json.dumps(status), iso(when), grant_id),
            )

    def set_grant_receipt(self, grant_id: str, receipt: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE grants SET ledger_receipt = ? WHERE id = ?",
                (json.dumps(receipt), grant_id),
            )

    def set_ledger_entry(self, table: str, grant_id: str, entry: dict[str, Any]) -> None:
        """Keep a customer's endorsed ledger entry (``table``: grants or revocations)."""
        key = {"grants": "id", "revocations": "grant_id"}[table]
        with self.transaction() as db:
            db.execute(f"UPDATE {table} SET ledger_entry = ? WHERE {key} = ?",
                       (json.dumps(entry), grant_id))

    def grant(self, grant_id: str) -> GrantRecord | None:
        row = self._db.execute("SELECT * FROM grants WHERE id = ?", (grant_id,)).fetchone()
        return None if row is None else self._grant(row)

    def grants(self) -> list[GrantRecord]:
        rows = self._db.execute("SELECT * FROM grants ORDER BY issued, id").fetchall()
        return [self._grant(row) for row in rows]

    @staticmethod
    def _grant(row: sqlite3.Row) -> GrantRecord:
        return GrantRecord(
            id=row["id"], digest=row["digest"], credential=json.loads(row["credential"]),
            node_address=row["node_address"], node_did=row["node_did"],
            requester=row["requester"], purpose=row["purpose"],
            scopes=tuple(json.loads(row["scopes"])), issued=from_iso(row["issued"]),
            expires=from_iso(row["expires"]), max_queries=row["max_queries"],
            dp_epsilon=row["dp_epsilon"], delivery=row["delivery"],
            delivery_error=row["delivery_error"], delivered_at=_opt_time(row["delivered_at"]),
            last_status=_loads(row["last_status"]), status_at=_opt_time(row["status_at"]),
            revoked_at=_opt_time(row["revoked_at"]),
            ledger_receipt=_loads(row["ledger_receipt"]),
            ledger_entry=_loads(row["ledger_entry"]),
        )

    # revocations ----------------------------------------------------------------------------

    def add_revocation(self, grant_id: str, document: dict[str, Any], issued: datetime) -> None:
        """Save a signed revocation as pending; the grant counts as revoked locally from now."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO revocations(grant_id, document, issued, delivery) "
                "VALUES (?, ?, ?, ?)",
                (grant_id, json.dumps(document), iso(issued), PENDING),
            )
            db.execute("UPDATE grants SET revoked_at = ? WHERE id = ?", (iso(issued), grant_id))

    def mark_revocation_confirmed(self, grant_id: str, when: datetime) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE revocations SET delivery = ?, delivery_error = NULL, confirmed_at = ? "
                "WHERE grant_id = ?",
                (DELIVERED, iso(when), grant_id),
            )
            db.execute("UPDATE grants SET revoked_at = ? WHERE id = ?", (iso(when), grant_id))

    def mark_revocation_failed(self, grant_id: str, error: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE revocations SET delivery_error = ? WHERE grant_id = ?", (error, grant_id)
            )

    def revocation(self, grant_id: str) -> RevocationRecord | None:
        row = self._db.execute(
            "SELECT * FROM revocations WHERE grant_id = ?", (grant_id,)
        ).fetchone()
        return None if row is None else self._revocation(row)

    def revocations(self) -> list[RevocationRecord]:
        rows = self._db.execute("SELECT * FROM revocations ORDER BY issued").fetchall()
        return [self._revocation(row) for row in rows]

    @staticmethod
    def _revocation(row: sqlite3.Row) -> RevocationRecord:
        return RevocationRecord(
            grant_id=row["grant_id"], document=json.loads(row["document"]),
            issued=from_iso(row["issued"]), delivery=row["delivery"],
            delivery_error=row["delivery_error"], confirmed_at=_opt_time(row["confirmed_at"]),
            ledger_receipt=_loads(row["ledger_receipt"]),
            ledger_entry=_loads(row["ledger_entry"]),
        )

    def set_revocation_receipt(self, grant_id: str, receipt: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE revocations SET ledger_receipt = ? WHERE grant_id = ?",
                (json.dumps(receipt), grant_id),
            )

    # access events --------------------------------------------------------------------------

    def put_access_events(self, node_address: str, events: list[AccessRecord]) -> None:
        """Cache events (replacing earlier copies of the same sequence numbers)."""
        now = iso(utcnow())
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO access_events(node_address, seq, time, event, verified, "
                "ledger_verified, fetched_at, ledger_status, ledger_detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        node_address, e.seq, iso(e.time), json.dumps(e.event), int(e.verified),
                        None if e.ledger_verified is None else int(e.ledger_verified), now,
                        e.ledger_status, e.ledger_detail,
                    )
                    for e in events
                ],
            )

    def access_events(self, since: datetime | None = None) -> list[AccessRecord]:
        rows = self._db.execute(
            "SELECT * FROM access_events WHERE time >= ? ORDER BY time, node_address, seq",
            (iso(since) if since else "",),
        ).fetchall()
        return [
            AccessRecord(
                node_address=row["node_address"], seq=row["seq"], time=from_iso(row["time"]),
                event=json.loads(row["event"]), verified=bool(row["verified"]),
                ledger_verified=None if row["ledger_verified"] is None
                else bool(row["ledger_verified"]),
                ledger_status=row["ledger_status"], ledger_detail=row["ledger_detail"],
            )
            for row in rows
        ]

    # erasures (ledger.erasure) ----------------------------------------------------------------

    def add_erasure(self, node_did: str, address: str, request: dict[str, Any]) -> None:
        """Keep the signed request before it is sent: a retry sends the same one."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO erasures (node_did, node_address, request, "
                       "requested_at) VALUES (?, ?, ?, ?)",
                       (node_did, address, json.dumps(request), iso(utcnow())))

    def set_erasure_receipt(self, node_did: str, receipt: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("UPDATE erasures SET receipt = ?, erased_at = ? WHERE node_did = ?",
                       (json.dumps(receipt), iso(utcnow()), node_did))

    def erasure_request(self, node_did: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT request FROM erasures WHERE node_did = ?",
                               (node_did,)).fetchone()
        return None if row is None else dict(json.loads(row["request"]))

    def erasure_receipts_by_node(self) -> dict[str, dict[str, Any]]:
        """Node DID -> its confirmed erasure receipt."""
        return {did: receipt for did, receipt in self.erasure_receipts() if receipt}

    def erasure_receipts(self) -> list[tuple[str, dict[str, Any] | None]]:
        """(node DID, erasure receipt or None while not confirmed) of every erasure asked."""
        return [(row["node_did"], _loads(row["receipt"])) for row in self._db.execute(
            "SELECT node_did, receipt FROM erasures ORDER BY requested_at")]

    # migrations (ledger.migration): the durable record that makes a move all-or-nothing ------

    def add_migration(self, migration: str, source: str, source_did: str, target: str,
                      target_did: str) -> None:
        now = iso(utcnow())
        with self.transaction() as db:
            db.execute("INSERT INTO migrations (id, source, source_did, target, target_did, "
                       "state, started_at, updated_at) VALUES (?, ?, ?, ?, ?, 'started', ?, ?)",
                       (migration, source, source_did, target, target_did, now, now))

    def update_migration(self, migration: str, state: str, **values: Any) -> None:
        """Move a migration to ``state``, keeping ``values`` (export, request,
        import_receipt: JSON-encoded; note: text) in the same transaction."""
        columns = {k: (v if k == "note" or v is None else json.dumps(v))
                   for k, v in values.items()}
        assignments = "".join(f", {k} = ?" for k in columns)
        with self.transaction() as db:
            db.execute(f"UPDATE migrations SET state = ?, updated_at = ?{assignments} "
                       "WHERE id = ?", (state, iso(utcnow()), *columns.values(), migration))

    def migration(self, migration: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM migrations WHERE id = ?", (migration,)).fetchone()
        return None if row is None else _migration(row)

    def unfinished_migration(self) -> dict[str, Any] | None:
        """The migration not yet done nor rolled back (one at a time), or None."""
        row = self._db.execute("SELECT * FROM migrations WHERE state NOT IN ('done', "
                               "'rolled-back') ORDER BY started_at LIMIT 1").fetchone()
        return None if row is None else _migration(row)

    def migrations(self) -> list[dict[str, Any]]:
        return [_migration(row) for row in self._db.execute(
            "SELECT * FROM migrations ORDER BY started_at")]


def _migration(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    for key in ("export", "request", "import_receipt"):
        record[key] = _loads(record[key])
    return record
