"""Customers imported from another node (issue 13, migrate): the ``Import`` RPC's store.

A customer moving here from node A sends A's signed export and their signed migration request
(``ledger.migration``). This node checks both, then in one transaction: gives the customer a
subject of their own (reference ``subject_ref(["import", migration id])``, a fresh SM4 data
key), binds it to their DID, keeps each exported row SM4-encrypted under that key in
``imported_rows`` (the canonical copy) and writes it into the dataset's vault table, where
queries see it like any synced row. It answers with its signed import receipt; a repeated
request (same migration id) gets the same receipt.

``sync`` deletes vault rows its source no longer has: imported customers' rows are left out of
that (``imported_sids``) and written back from ``imported_rows`` after every sync
(``materialise``), so a table rebuilt for a new data-map layout keeps them too.
"""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime
from typing import Any

from agent_node import locations
from agent_node.datamap import DatasetSpec
from agent_node.errors import (
    InvalidRequest,
    PermissionDenied,
    PreconditionFailed,
    Unauthenticated,
)
from agent_node.home import NodeHome
from agent_node.vault import (
    Vault,
    _ensure_table,
    encrypted_column,
    iso,
    plain_column,
    row_fingerprint,
    table_name,
)
from agent_node.vaultcrypto import NONCE_BYTES, encrypt_cell
from ledger import migration as protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS imports (
  migration TEXT PRIMARY KEY, did TEXT NOT NULL, sid INTEGER NOT NULL, source TEXT NOT NULL,
  export_digest TEXT NOT NULL, receipt TEXT NOT NULL, imported_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS imports_did ON imports(did);
CREATE TABLE IF NOT EXISTS imported_rows (
  sid INTEGER NOT NULL, dataset TEXT NOT NULL, seq INTEGER NOT NULL, row BLOB NOT NULL,
  PRIMARY KEY (sid, dataset, seq)) WITHOUT ROWID;
"""
ROW_AAD = "sovereign-fabric/imported-row"


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the tables (statement by statement: executescript would commit the caller's
    transaction)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def imported_sids(conn: sqlite3.Connection) -> set[int]:
    """Subjects imported from another node: a sync never deletes their rows."""
    ensure_schema(conn)
    return {r[0] for r in conn.execute("SELECT DISTINCT sid FROM imports")}


class ImportStore:
    """Imports at one node (the service's Import RPC)."""

    def __init__(self, home: NodeHome, vault: Vault) -> None:
        self.home, self.vault = home, vault
        with vault.connection() as conn:
            ensure_schema(conn)

    def import_customer(self, caller: str, body: dict[str, Any]) -> dict[str, Any]:
        """Check and carry out an import; the node-signed import receipt."""
        request = body.get("request")
        config = self.home.config
        try:
            did = protocol.verify_request(request, self.home.identity.did, caller=caller,
                                          require_sm2=config.profile == "gm",
                                          clock_skew=config.clock_skew)
            assert isinstance(request, dict)
            export = protocol.verify_export(body.get("export"), request)
        except protocol.MigrationError as exc:
            kind = PermissionDenied if "another" in str(exc) else Unauthenticated
            raise kind(str(exc), reason="bad-migration") from None
        salt = body.get("subject_salt")
        from agent_node.accesslog import remember_salt, valid_salt

        if salt is not None and not valid_salt(salt):
            raise InvalidRequest("subject_salt must be 64 hex characters (32 random bytes)")
        with self.vault.connection() as conn:
            known = conn.execute("SELECT receipt FROM imports WHERE migration = ?",
                                 (request["migration"],)).fetchone()
        if known is not None:
            return dict(json.loads(known[0]))  # a repeated request: the same receipt
        datasets = self._checked(export["datasets"])
        statement = {"customer": did, "node": self.home.identity.did,
                     "from": request["from"], "migration": request["migration"],
                     "export": request["export"], "request": protocol.request_hash(request),
                     "datasets": {name: len(rows) for name, rows in export["datasets"].items()},
                     "imported_at": iso(datetime.now(UTC))}
        receipt = protocol.sign_import(statement, self.home.identity)
        with self.vault.transaction() as conn:
            if conn.execute("SELECT 1 FROM imports WHERE migration = ?",
                            (request["migration"],)).fetchone():
                raise PreconditionFailed("this migration is being imported by another call; "
                                         "send the request again", reason="import-busy")
            ref = self.vault.keys.subject_ref(["import", request["migration"]])
            sid = self.vault.subject_sid(conn, ref)
            conn.execute("INSERT OR IGNORE INTO bindings (sid, did, bound_at) VALUES (?, ?, ?)",
                         (sid, did, statement["imported_at"]))
            cipher = self.vault.keys.cell_cipher(self.vault.data_key(conn, sid))
            for name, rows in export["datasets"].items():
                if name not in datasets:
                    continue  # an empty dataset (see _checked)
                _ensure_table(self.vault, conn, datasets[name])
                conn.executemany("INSERT INTO imported_rows VALUES (?, ?, ?, ?)",
                                 [(sid, name, seq, _seal(cipher, sid, name, seq, row))
                                  for seq, row in enumerate(rows)])
                materialise(self.vault, conn, datasets[name], sids=[sid])
            if salt is not None:
                remember_salt(conn, did, salt, statement["imported_at"])
            conn.execute("INSERT INTO imports VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (request["migration"], did, sid, request["from"], request["export"],
                          json.dumps(receipt), statement["imported_at"]))
        return receipt

    def _checked(self, exported: dict[str, Any]) -> dict[str, DatasetSpec]:
        """This node's spec of every exported dataset; refused (nothing imported) when it
        does not map one, or a row has a column it does not map."""
        mapped = self.home.datamap().datasets
        found = {}
        for name, rows in exported.items():
            spec = mapped.get(name)
            if rows == []:
                continue  # nothing of the customer's in it: no need to map it here
            if spec is None:
                raise PreconditionFailed(f"this node does not map dataset {name!r}, so it "
                                         "cannot hold the exported rows; nothing was imported",
                                         reason="import-unmapped")
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise InvalidRequest(f"the export's dataset {name!r} is not a list of rows")
            extra = sorted({c for r in rows for c in r} - set(spec.columns))
            if extra:
                raise PreconditionFailed(f"this node's dataset {name!r} has no column "
                                         f"{extra[0]!r} that the export holds; nothing was "
                                         "imported", reason="import-unmapped")
            found[name] = spec
        return found


def _seal(cipher: Any, sid: int, dataset: str, seq: int, row: dict[str, Any]) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    aad = f"{ROW_AAD}|{sid}|{dataset}|{seq}".encode()
    return nonce + cipher.encrypt(nonce, json.dumps(row).encode(), aad)


def _open(cipher: Any, sid: int, dataset: str, seq: int, blob: bytes) -> dict[str, Any]:
    aad = f"{ROW_AAD}|{sid}|{dataset}|{seq}".encode()
    return dict(json.loads(cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)))


def materialise(vault: Vault, conn: sqlite3.Connection, dataset: DatasetSpec,
                sids: list[int] | None = None) -> int:
    """Write imported rows of ``dataset`` into its vault table where missing (after an
    import, and after every sync of it); how many were written."""
    ensure_schema(conn)
    table = table_name(dataset.name)
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
        return 0
    wanted = sids if sids is not None else sorted(imported_sids(conn))
    columns = list(dataset.columns.values())
    names = ["row_id", "sid", "rfp", "row_mac", *(
        encrypted_column(c.name) if c.encrypted else plain_column(c.name) for c in columns)]
    insert = (f'INSERT OR IGNORE INTO "{table}" ({", ".join(chr(34) + n + chr(34) for n in names)})'
              f' VALUES ({", ".join("?" for _ in names)})')
    written = 0
    for sid in wanted:
        cipher = vault.keys.cell_cipher(vault.data_key(conn, sid))
        stored = []
        for seq, blob in conn.execute("SELECT seq, row FROM imported_rows WHERE sid = ? AND "
                                      "dataset = ? ORDER BY seq", (sid, dataset.name)):
            row = _open(cipher, sid, dataset.name, seq, blob)
            values = [_typed(row.get(c.name), c.type) for c in columns]
            row_id = vault.keys.row_mac(["import", sid, dataset.name, seq])
            mac = vault.keys.row_mac(["v", values])
            cells: list[Any] = [row_id, sid, row_fingerprint(row_id, mac), mac]
            for column, value in zip(columns, values, strict=True):
                cells.append(encrypt_cell(cipher, value, f"{dataset.name}|{column.name}|"
                                          f"{row_id}".encode()) if column.encrypted else value)
            stored.append(cells)
        written += conn.executemany(insert, stored).rowcount if stored else 0
    return written


def _typed(value: Any, type_: str) -> Any:
    """An exported value as this node's column type (A exported it typed already)."""
    if value is None or value == "":
        return None
    try:
        if type_ == "integer":
            return int(value)
        if type_ == "real":
            return float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"an exported value is not of this node's column type {type_}; "
                             "nothing was imported") from None
    return str(value)


def _erase_imports(conn: sqlite3.Connection, customer: locations.Customer) -> locations.Erased:
    ensure_schema(conn)
    return locations.delete_rows(conn, "imports", "did = ?", (customer.did,))


def _erase_imported_rows(conn: sqlite3.Connection, customer: locations.Customer
                         ) -> locations.Erased:
    ensure_schema(conn)
    return locations.delete_rows(conn, "imported_rows", "sid IN (SELECT value FROM "
                                 "json_each(?))", (locations.json_list(customer.sids),))


_OWNER = "agent_node.importstore"
locations.table("imports", _OWNER, "a customer imported from another node: their DID, the "
                "source node and the signed import receipt", "delete", _erase_imports)
locations.table("imported_rows", _OWNER, "an imported customer's exported rows, SM4-encrypted "
                "under their data key (the copy a sync never deletes)", "delete",
                _erase_imported_rows)
