"""Erasure of one customer at this node (issue 13): verify the signed request, destroy what
every registered location (``agent_node.locations``) holds about them, scan the node home's
raw bytes for their identifiers and values, and sign the proof (``ledger.erasure``).

The erasure runs in three durable steps, recorded in ``erasures`` (one row per customer,
found by a keyed tag of their DID, never the DID itself once done):

1. ``requested`` -> ``erased``: every table location's erase function (grants revoked and
   deleted, rows deleted, log bodies naming them redacted, their commitment salt deleted),
   those in the activity database (``agent_node.activity``) in a first transaction, the
   vault's in a second one that also adds their subject references to the erasure list
   (``erased_subjects``: never synced or restored again), drops the request and keeps the
   values to scan for SM4-encrypted (key derived from the master key) until step 3.
2. WAL checkpoints and truncation, then a scan of the raw bytes for the customer's DID and
   values: every file under the node home whole (WALs, journals, backups, logs) but the
   vault, read at the pages the deletion rewrote (from the WAL's frame headers) and its free
   pages; with ``erasure_scan = "full"``, the vault whole too.
3. ``erased`` -> ``proved``, one transaction: the customer's SM4 data keys are destroyed (the
   ``destroy-key`` locations), the signed proof and the ledger entry are stored, the request
   dropped and the values kept sealed for the sweep only; then a second checkpoint.
4. The sweep (``sweep``, off the customer's request: ``Sweeper``): every file whole, the
   vault included, for the values of every erasure waiting, in one pass; what it found is
   recorded with each erasure and the values dropped.

A crash anywhere is completed by ``resume`` (``sov-node serve`` runs it on start): step 1 is
repeatable (its first transaction records what it destroyed, its second is atomic), steps 2
and 4 are repeatable, step 3 is atomic. A repeated request returns the stored proof.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import stat
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hyperscan

from agent_node import activity, locations
from agent_node.errors import InvalidRequest, NotFound, PermissionDenied, Unauthenticated
from agent_node.home import NodeHome
from agent_node.vault import (
    Vault,
    data_key_id,
    encrypted_column,
    iso,
    mark_erased,
    plain_column,
    table_name,
)
from agent_node.vaultcrypto import NONCE_BYTES, decrypt_cell
from ledger import erasure as protocol
from ledger.events import subject_commitment

log = logging.getLogger("agent_node.erasure")

SCHEMA = """
CREATE TABLE IF NOT EXISTS erasures (
  did_tag TEXT PRIMARY KEY, state TEXT NOT NULL, request_hash TEXT NOT NULL, request TEXT,
  pending TEXT, proof TEXT, entry TEXT, receipt TEXT, updated_at TEXT NOT NULL,
  sweep_needles TEXT, sweep TEXT) WITHOUT ROWID;
"""
# In the activity database: what step 1's first transaction destroyed there, written in that
# same transaction, so that a rerun after a crash before the vault's part (which finds those
# rows already gone) still proves them; deleted with the proof.
STEPS_SCHEMA = """
CREATE TABLE IF NOT EXISTS {db}.erasure_steps (
  did_tag TEXT PRIMARY KEY, results TEXT NOT NULL) WITHOUT ROWID;
"""
# Columns added after the first release, with their declarations (added to older homes).
ADDED_COLUMNS = {"sweep_needles": "TEXT", "sweep": "TEXT"}
LIST_FILE = "erasure-list.json"
MIN_NEEDLE = 4  # shorter values match random bytes; they are not scanned for
STATE_AAD = b"sovereign-fabric/erasure-state"


@dataclass(frozen=True)
class Outcome:
    """An erasure's result as the customer receives it."""

    proof: dict[str, Any]
    entry: dict[str, Any] | None  # the signed ledger entry (None: no commitment salt known)
    receipt: dict[str, Any] | None  # the ledger's receipt once anchored
    ledger: str  # "anchored", "not anchored yet: ...", "no ledger configured", ...
    # The sweep of every file whole that follows a proof whose scan read the vault only where
    # the rows were: {"state": "pending"} until it ran, then what it found; None when the
    # proof's own scan read every file whole.
    sweep: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"proof": self.proof, "ledger_entry": self.entry, "receipt": self.receipt,
                "ledger": self.ledger, "sweep": self.sweep}


class Erasure:
    """Erasures at one node (the service's Erase RPC and ``sov-node erase``)."""

    def __init__(self, home: NodeHome, vault: Vault) -> None:
        self.home, self.vault = home, vault
        with vault.connection() as conn:
            conn.executescript(SCHEMA)
            conn.executescript(STEPS_SCHEMA.format(db=activity.SCHEMA))
            have = {r[1] for r in conn.execute("PRAGMA table_info(erasures)")}
            for column, kind in ADDED_COLUMNS.items():
                if column not in have:
                    conn.execute(f"ALTER TABLE erasures ADD COLUMN {column} {kind}")

    # -- entry points ---------------------------------------------------------------------------

    def erase(self, request: Any, *, caller: str | None = None,
              salt_hex: str | None = None) -> Outcome:
        """Carry out (or finish, or repeat) a verified erasure request."""
        config = self.home.config
        try:
            did = protocol.verify_request(request, self.home.identity.did, caller=caller,
                                          require_sm2=config.profile == "gm",
                                          clock_skew=config.clock_skew)
        except protocol.ErasureError as exc:
            kind = PermissionDenied if "another" in str(exc) else Unauthenticated
            raise kind(str(exc), reason="bad-erasure-request") from None
        if salt_hex is not None and not _valid_salt(salt_hex):
            raise InvalidRequest("subject_salt must be 64 hex characters (32 random bytes)")
        tag = self._tag(did)
        with self.vault.transaction() as conn:
            row = conn.execute("SELECT state FROM erasures WHERE did_tag = ?",
                               (tag,)).fetchone()
            if row is None:
                if not _holds(conn, did):
                    raise NotFound("this node holds nothing about that customer: there is "
                                   "nothing to erase", reason="unknown-customer")
                conn.execute("INSERT INTO erasures (did_tag, state, request_hash, request, "
                             "pending, updated_at) VALUES (?, 'requested', ?, ?, ?, ?)",
                             (tag, protocol.request_hash(request), json.dumps(request),
                              json.dumps({"salt": salt_hex}), _now()))
        self._run(tag)
        self.push_pending()
        return self.outcome(did)

    def resume(self) -> int:
        """Finish every erasure a crash interrupted; how many were finished."""
        with self.vault.connection() as conn:
            tags = [r[0] for r in conn.execute(
                "SELECT did_tag FROM erasures WHERE state != 'proved'")]
        for tag in tags:
            self._run(tag)
        if tags:
            self.push_pending()
        with self.vault.transaction() as conn:  # a record a crash left after the proof
            conn.execute(f"DELETE FROM {activity.SCHEMA}.erasure_steps WHERE did_tag IN "
                         "(SELECT did_tag FROM erasures WHERE state = 'proved')")
        self.sweep()
        return len(tags)

    def outcome(self, did: str) -> Outcome:
        with self.vault.connection() as conn:
            row = conn.execute("SELECT proof, entry, receipt, sweep_needles IS NOT NULL, sweep "
                               "FROM erasures WHERE did_tag = ? AND state = 'proved'",
                               (self._tag(did),)).fetchone()
        if row is None:
            raise NotFound("no finished erasure of that customer at this node",
                           reason="unknown-customer")
        proof = {**json.loads(row[0]), "customer": did}
        entry = json.loads(row[1]) if row[1] else None
        receipt = json.loads(row[2]) if row[2] else None
        if entry is None:
            state = "not written: the node holds no commitment salt of this customer"
        elif receipt is not None:
            state = "anchored"
        elif not self.home.config.ledger_address:
            state = "no ledger configured"
        else:
            state = "not anchored yet: the node retries"
        sweep = {"state": "pending"} if row[3] else json.loads(row[4]) if row[4] else None
        return Outcome(proof, entry, receipt, state, sweep)

    def sweep(self) -> int:
        """Read every file of the home whole, the vault included, for the values of each
        erasure whose proof read the vault only where the customer's rows were (the default
        ``erasure_scan = "pages"``); record what was found with each erasure and drop the
        values. One pass for every erasure waiting; how many were swept. Runs off the
        customer's request (``Sweeper``), and again on start after a crash."""
        with self.vault.connection() as conn:
            waiting = conn.execute("SELECT did_tag, sweep_needles FROM erasures WHERE state = "
                                   "'proved' AND sweep_needles IS NOT NULL").fetchall()
        if not waiting:
            return 0
        results = self._swept_all(waiting)
        with self.vault.transaction() as conn:
            conn.executemany("UPDATE erasures SET sweep = ?, sweep_needles = NULL, "
                             "updated_at = ? WHERE did_tag = ? AND sweep_needles IS NOT NULL",
                             [(json.dumps(r), _now(), tag) for tag, r in results.items()])
        self._checkpoint()  # the sealed values' old page versions leave the database file
        for result in results.values():
            event = {"event": "erasure-swept", "hits": result["hits"],
                     "bytes": result["bytes"]}
            if result["hits"]:
                log.warning(json.dumps({**event, "event": "erasure-sweep-found-copies",
                                        "found_in": result["found_in"]}))
            else:
                log.info(json.dumps(event))
        return len(results)

    def _swept_all(self, waiting: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
        """Each waiting erasure's sweep record, from one pass over every file whole."""
        needles = {tag: list(self._open(tag, sealed)["needles"]) for tag, sealed in waiting}
        scan = scan_home(self.home.path, sorted({n for own in needles.values() for n in own}))
        results = {tag: _swept(scan, len(own)) for tag, own in needles.items()}
        if any(f["hits"] for f in scan["files"]):
            # Rare: a hit. A value that is part of a value other customers still hold (a
            # word, a domain) is found wherever theirs is: not a copy. Each erasure is then
            # scanned again, without those, to tell whose values were found and where.
            inside = self._inside_other_values({n for own in needles.values() for n in own})
            results = {}
            for tag, own in needles.items():
                theirs = [n for n in own if n in inside]
                results[tag] = _swept(
                    scan_home(self.home.path, [n for n in own if n not in inside]), len(own),
                    scan_home(self.home.path, theirs) if theirs else None)
        return results

    def _inside_other_values(self, needles: set[str]) -> set[str]:
        """The ``needles`` that occur inside a plain text value the vault still holds (other
        customers' rows: the erased customer's are gone). A search of every such column, run
        by the sweep only, and only after a hit."""
        inside: set[str] = set()
        with self.vault.connection() as conn:
            for dataset in self.home.datamap().datasets.values():
                if not self.vault.dataset_ready(conn, dataset):
                    continue
                table = table_name(dataset.name)
                for column in dataset.columns.values():
                    if column.encrypted:
                        continue
                    stored = plain_column(column.name)
                    inside.update(n for n in needles - inside if conn.execute(
                        f'SELECT 1 FROM "{table}" WHERE instr("{stored}", ?) > 0 LIMIT 1',
                        (n,)).fetchone())
        return inside

    def erased_count(self) -> int:
        with self.vault.connection() as conn:
            return int(conn.execute("SELECT count(*) FROM erasures WHERE state = 'proved'")
                       .fetchone()[0])

    # -- the three steps --------------------------------------------------------------------------

    def _run(self, tag: str) -> None:
        with self.vault.connection() as conn:
            row = conn.execute("SELECT state FROM erasures WHERE did_tag = ?", (tag,)).fetchone()
        if row is None or row[0] == "proved":
            return
        pages = None  # after a crash in between, the rewritten pages are unknown: full scan
        if row[0] == "requested":
            self._destroy_rows(tag)
            if self.home.config.erasure_scan == "pages":
                pages = rewritten_pages(self.vault.path)
        self._checkpoint()
        if pages is not None:
            pages = pages.with_free(free_pages(self.vault.path))
        scan = self._scan(tag, pages)
        self._prove(tag, scan)
        self._checkpoint()  # the destroyed keys' old page versions leave the database file
        self._write_list()

    def _destroy_rows(self, tag: str) -> None:
        activity = self._destroy_activity_rows(tag)
        with self.vault.transaction() as conn:
            request, pending = conn.execute(
                "SELECT request, pending FROM erasures WHERE did_tag = ? AND state = "
                "'requested'", (tag,)).fetchone()
            did = json.loads(request)["subject"]
            customer = _customer(conn, did)
            salt = _salt(conn, did) or json.loads(pending).get("salt")
            private, plain = self._values(conn, customer)
            keys = [data_key_id(w) for (w,) in conn.execute(
                "SELECT wrapped_key FROM subjects WHERE sid IN (SELECT value FROM json_each(?))"
                " AND length(wrapped_key) > 0", (locations.json_list(customer.sids),))]
            results = dict(activity)
            for location in locations.locations():
                if location.kind == "table" and location.erase is not None \
                        and location.erasure != "destroy-key" and location.database == "vault":
                    results[location.name] = _result(location, location.erase(conn, customer))
            shared = {v for (table, column), values in plain.items() for v in values
                      if conn.execute(f'SELECT 1 FROM "{table}" WHERE "{column}" = ? LIMIT 1',
                                      (v,)).fetchone()}
            needles = sorted({did, *private, *(v for vs in plain.values() for v in vs)}
                             - shared)
            mark_erased(conn, list(customer.refs), _now(), "")
            state = {"customer": [did, list(customer.sids), list(customer.refs),
                                  list(customer.grant_ids)],
                     "salt": salt, "keys": keys, "locations": results, "needles": needles,
                     "shared": len(shared)}
            # Sealed, and the request dropped: the scan must find the DID nowhere in clear.
            conn.execute("UPDATE erasures SET state = 'erased', request = NULL, pending = ?, "
                         "updated_at = ? WHERE did_tag = ?",
                         (self._seal(tag, state), _now(), tag))

    def _destroy_activity_rows(self, tag: str) -> dict[str, dict[str, Any]]:
        """Step 1's first transaction: the locations in the activity database (access-log
        bodies redacted, grant counters deleted). A transaction writing both files commits
        each atomically but not both at once, so they commit first, alone, with a record of
        what they destroyed (``erasure_steps``): a crash before the vault's part leaves the
        erasure 'requested', and the rerun finds the record and proves what the first run
        destroyed (its own repeat of the locations, each idempotent, finds nothing more)."""
        with self.vault.transaction() as conn:
            done = conn.execute(f"SELECT results FROM {activity.SCHEMA}.erasure_steps WHERE "
                                "did_tag = ?", (tag,)).fetchone()
            if done is not None:
                return dict(json.loads(done[0]))
            request = conn.execute("SELECT request FROM erasures WHERE did_tag = ? AND state = "
                                   "'requested'", (tag,)).fetchone()[0]
            customer = _customer(conn, json.loads(request)["subject"])
            results = {location.name: _result(location, location.erase(conn, customer))
                       for location in locations.locations()
                       if location.kind == "table" and location.erase is not None
                       and location.erasure != "destroy-key"
                       and location.database == "activity"}
            conn.execute(f"INSERT INTO {activity.SCHEMA}.erasure_steps (did_tag, results) "
                         "VALUES (?, ?)", (tag, json.dumps(results)))
            return results

    def _scan(self, tag: str, pages: Pages | None = None) -> dict[str, Any]:
        from agent_node.backup import clear_work

        clear_work(self.home.path)  # a crashed backup's plain snapshot must not outlive this
        with self.vault.connection() as conn:
            state = self._open(tag, conn.execute("SELECT pending FROM erasures WHERE "
                                                 "did_tag = ?", (tag,)).fetchone()[0])
        vault = (self.vault.path.relative_to(self.home.path), pages) if pages else None
        return scan_home(self.home.path, state["needles"], shared=int(state["shared"]),
                         vault_pages=vault)

    def _prove(self, tag: str, scan: dict[str, Any]) -> None:
        from agent_node.backup import erase_backup_keys

        with self.vault.connection() as conn:
            row = conn.execute("SELECT pending FROM erasures WHERE did_tag = ? AND state = "
                               "'erased'", (tag,)).fetchone()
        if row is None:
            return
        did, _, refs, _ = self._open(tag, row[0])["customer"]
        # Idempotent (a repeated step 3 destroys nothing more): every backup's sealed rows of
        # this customer become unreadable, whoever holds the backup file (agent_node.backup).
        keyring = erase_backup_keys(self.home, did, refs)
        with self.vault.transaction() as conn:
            row = conn.execute("SELECT request_hash, pending FROM erasures WHERE did_tag = ? "
                               "AND state = 'erased'", (tag,)).fetchone()
            if row is None:
                return
            request_hash, pending = row
            state = self._open(tag, pending)
            did, sids, refs, grant_ids = state["customer"]
            customer = locations.Customer(did, tuple(sids), tuple(refs), tuple(grant_ids))
            results = dict(state["locations"])
            results["file.keyring"] = {"treatment": "destroy-key", "rows": keyring.rows,
                                       "kept": 0, "digest": keyring.digest}
            for location in locations.locations():
                if location.kind == "table" and location.erasure == "destroy-key":
                    assert location.erase is not None
                    results[location.name] = _result(location, location.erase(conn, customer))
            salt_location = results.get("vault.subject_salts", {})
            proof = protocol.sign_proof({
                "customer": did, "node": self.home.identity.did, "request": request_hash,
                "locations": [{"name": name, **result}
                              for name, result in sorted(results.items())],
                "destroyed_keys": state["keys"],
                "salt_destroyed": bool(salt_location.get("rows")),
                "scan": scan, "erased_at": iso(datetime.now(UTC)),
            }, self.home.identity)
            digest = protocol.proof_digest(proof)
            entry = None
            if state.get("salt"):
                from ledger.authority import sign_entry

                commitment = subject_commitment(did, bytes.fromhex(state["salt"]))
                entry = sign_entry(protocol.ledger_entry(proof, commitment), self.home.identity)
            conn.execute("UPDATE erased_subjects SET proof_digest = ? WHERE subject_ref IN "
                         "(SELECT value FROM json_each(?))", (digest, json.dumps(refs)))
            stored = {k: v for k, v in proof.items() if k != "customer"}
            # The vault read only where the rows were: the values wait, sealed, for the sweep
            # of every file whole that follows (``sweep``), then are dropped.
            sweep_needles = (self._seal(tag, {"needles": state["needles"]})
                             if scan.get("vault") != "whole file" and state["needles"]
                             else None)
            conn.execute("UPDATE erasures SET state = 'proved', request = NULL, pending = NULL, "
                         "proof = ?, entry = ?, updated_at = ?, sweep_needles = ? "
                         "WHERE did_tag = ?",
                         (json.dumps(stored), json.dumps(entry) if entry else None, _now(),
                          sweep_needles, tag))
            # Both files in one transaction, each atomic: a crash between their commits
            # leaves this record behind, which ``resume`` deletes.
            conn.execute(f"DELETE FROM {activity.SCHEMA}.erasure_steps WHERE did_tag = ?",
                         (tag,))
        log.info(json.dumps({"event": "erasure-proved", "proof_digest": digest,
                             "hits": protocol.scan_hits(proof)}))

    # -- ledger ---------------------------------------------------------------------------------

    def push_pending(self) -> int:
        """Append the erasure entries not anchored yet to the ledger (when one is configured);
        how many were anchored. A ledger outage leaves them for the next try."""
        if not self.home.config.ledger_address:
            return 0
        from agent_node.server import LedgerPusher
        from ledger.errors import LedgerError

        with self.vault.connection() as conn:
            pending = conn.execute("SELECT did_tag, entry FROM erasures WHERE state = 'proved' "
                                   "AND entry IS NOT NULL AND receipt IS NULL").fetchall()
        if not pending:
            return 0
        pusher = LedgerPusher(self.home, self.vault)
        try:
            receipts = pusher.client().append_many([json.loads(e) for _, e in pending])
        except (LedgerError, OSError) as exc:
            log.warning(json.dumps({"event": "erasure-anchor-failed",
                                    "error": type(exc).__name__}))
            return 0
        finally:
            pusher.close()
        with self.vault.transaction() as conn:
            conn.executemany("UPDATE erasures SET receipt = ? WHERE did_tag = ?",
                             [(json.dumps(r.to_json()), tag)
                              for (tag, _), r in zip(pending, receipts, strict=True)])
        return len(pending)

    # -- helpers --------------------------------------------------------------------------------

    def _tag(self, did: str) -> str:
        # Keyed: finds a repeated request without keeping the DID; only the node's master key
        # could test a guessed DID against it.
        return self.vault.keys.row_mac(["erasure-did", did])

    def _values(self, conn: sqlite3.Connection, customer: locations.Customer
                ) -> tuple[set[str], dict[tuple[str, str], set[str]]]:
        """The customer's text values: encrypted tiers (decrypted), and per plain column."""
        private: set[str] = set()
        plain: dict[tuple[str, str], set[str]] = {}
        for dataset in self.home.datamap().datasets.values():
            if not self.vault.dataset_ready(conn, dataset):
                continue
            table = table_name(dataset.name)
            columns = list(dataset.columns.values())
            names = ", ".join(f'"{_stored(c)}"' for c in columns)
            for sid in customer.sids:
                cipher = None
                for row in conn.execute(f'SELECT row_id, {names} FROM "{table}" WHERE sid = ?',
                                        (sid,)):
                    for column, value in zip(columns, row[1:], strict=True):
                        if value is None:
                            continue
                        if column.encrypted:
                            cipher = cipher or self.vault.keys.cell_cipher(
                                self.vault.data_key(conn, sid))
                            value = decrypt_cell(cipher, value, f"{dataset.name}|{column.name}|"
                                                 f"{row[0]}".encode())
                            if isinstance(value, str) and len(value) >= MIN_NEEDLE:
                                private.add(value)
                        elif isinstance(value, str) and len(value) >= MIN_NEEDLE:
                            plain.setdefault((table, plain_column(column.name)), set()).add(value)
        return private, plain

    def _cipher(self, tag: str) -> Any:
        """The SM4 key that seals an erasure's working state until its proof is signed (the
        state is deleted then; the key is derived from the master key and the DID's tag)."""
        key = bytes.fromhex(self.vault.keys.row_mac(["erasure-state", tag]))[:16]
        return self.vault.keys.cell_cipher(key)

    def _seal(self, tag: str, state: dict[str, Any]) -> str:
        nonce = os.urandom(NONCE_BYTES)
        return (nonce + self._cipher(tag).encrypt(nonce, json.dumps(state).encode(),
                                                  STATE_AAD)).hex()

    def _open(self, tag: str, sealed: str) -> dict[str, Any]:
        blob = bytes.fromhex(sealed)
        return dict(json.loads(self._cipher(tag).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                                         STATE_AAD)))

    def _checkpoint(self) -> None:
        """Move every committed page into the database files (the vault and the activity
        database) and truncate their WALs to zero bytes, so old page versions (the deleted
        rows') are gone from them. On this thread's vault connection (the activity database
        is attached to it): a new connection's first WAL sync also syncs the directory, an
        fsync more per file and checkpoint."""
        with self.vault.connection() as conn:
            for schema, path in (("main", self.vault.path),
                                 (activity.SCHEMA, self.vault.activity_path)):
                for _ in range(100):
                    busy = conn.execute(f"PRAGMA {schema}.wal_checkpoint(TRUNCATE)"
                                        ).fetchone()[0]
                    if not busy:
                        break
                    time.sleep(0.05)  # a reader's snapshot still needs the WAL: wait it out
                else:
                    log.warning(json.dumps({"event": "erasure-checkpoint-busy",
                                            "file": path.name}))

    def _write_list(self) -> None:
        """Mirror the erasure list (opaque references, proof digests) in a file beside the
        vault: it survives a restore of the vault from an older backup."""
        with self.vault.connection() as conn:
            listed = [{"subject_ref": r, "erased_at": a, "proof_digest": d} for r, a, d in
                      conn.execute("SELECT subject_ref, erased_at, proof_digest FROM "
                                   "erased_subjects ORDER BY subject_ref")]
        path = self.home.path / LIST_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(listed, indent=1), encoding="utf-8")
        os.chmod(tmp, 0o600)
        tmp.replace(path)


@dataclass(frozen=True)
class Pages:
    """Pages of the vault database to read (numbers from 1), of ``size`` bytes: those a
    deletion rewrote, and ``free`` ones (on the freelist) among them."""

    size: int
    numbers: frozenset[int]
    free: frozenset[int] = frozenset()

    def with_free(self, free: frozenset[int]) -> Pages:
        return Pages(self.size, self.numbers | free, free)


WAL_MAGIC = (0x377F0682, 0x377F0683)


def rewritten_pages(database: Path) -> Pages | None:
    """Every page the WAL of ``database`` holds a frame of, right after the erasure's delete
    committed: the pages that held the customer's rows and index entries (now rewritten,
    their freed space zeroed by ``secure_delete``), plus pages of recent other writes. None
    when that cannot be told (no WAL, or another writer restarted it meanwhile): the caller
    then scans the whole vault."""
    wal = Path(str(database) + "-wal")
    numbers: set[int] = set()
    try:
        with ReadOnlyFiles() as files:
            fd = files.fd(wal)
            if fd is None:
                return None
            header = os.pread(fd, 32, 0)
            length = os.fstat(fd).st_size
            if len(header) < 32:
                return None
            magic, _, size, _, salt1, salt2 = struct.unpack(">6I", header[:24])
            if magic not in WAL_MAGIC or size < 512 or size & (size - 1):
                return None
            offset = 32
            while offset + 24 + size <= length:  # frame headers only: 24 bytes a page
                page, _, frame1, frame2 = struct.unpack(">4I", os.pread(fd, 16, offset))
                if (frame1, frame2) != (salt1, salt2):
                    break  # frames of an earlier WAL generation: already in the database
                numbers.add(page)
                offset += 24 + size
            if os.pread(fd, 24, 0) != header[:24]:
                return None  # restarted by another writer while we read
    except (OSError, struct.error):
        return None
    return Pages(size, frozenset(numbers)) if numbers else None


def free_pages(database: Path) -> frozenset[int]:
    """The pages on the freelist of the SQLite database file ``database`` (its trunk and leaf
    pages, read from the file header's freelist pointer; https://sqlite.org/fileformat2.html
    section 1.4): space SQLite may hand out again, zeroed under ``secure_delete`` but read
    anyway. Empty when the file cannot be read as a database."""
    found: set[int] = set()
    try:
        with ReadOnlyFiles() as files:
            fd = files.fd(database)
            if fd is None:
                return frozenset()
            header = os.pread(fd, 100, 0)
            if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
                return frozenset()
            (size,) = struct.unpack(">H", header[16:18])
            size = 65536 if size == 1 else size
            trunk, count = struct.unpack(">II", header[32:40])
            while trunk and trunk not in found and len(found) <= count:
                found.add(trunk)
                data = os.pread(fd, size, (trunk - 1) * size)
                if len(data) < 8:
                    break
                following, leaves = struct.unpack(">II", data[:8])
                leaves = min(leaves, (len(data) - 8) // 4)
                found.update(struct.unpack(f">{leaves}I", data[8:8 + 4 * leaves]))
                trunk = following
    except (OSError, struct.error):
        return frozenset()
    return frozenset(found)


def scan_home(home: Path, needles: list[str], *, shared: int = 0,
              vault_pages: tuple[Path, Pages] | None = None) -> dict[str, Any]:
    """Count the needles' occurrences in the raw bytes of every file under ``home`` (one
    multi-literal pass per file, files and parts of files in parallel); with
    ``vault_pages``, that database file is read only at those pages."""
    scanner = Scanner([n.encode() for n in needles if n])
    files: list[dict[str, Any]] = []
    parts: list[list[Part]] = []
    for relative in locations.home_files(home):
        path = Path(home) / relative
        location = locations.file_location(relative)
        try:
            size = path.stat().st_size
        except OSError:  # gone since listed (a temporary file): nothing left to hold a value
            continue
        entry: dict[str, Any] = {"path": relative, "location": location.name if location
                                 else "unregistered", "bytes": size}
        if vault_pages is not None and Path(relative) == vault_pages[0]:
            pages = vault_pages[1]
            entry.update(scanned="rewritten and free pages", pages=len(pages.numbers),
                         free_pages=len(pages.free))
            parts.append(scanner.page_parts(path, pages))
        else:
            parts.append(scanner.file_parts(path, size))
        files.append(entry)
    for entry, hits in zip(files, scanner.count(parts), strict=True):
        entry["hits"] = hits
    return {"needles": len(scanner.needles), "shared_values_skipped": shared,
            "vault": "rewritten and free pages" if vault_pages else "whole file",
            "files": files}


@dataclass(frozen=True)
class Part:
    """A byte range of a file to search: ``[start, stop)`` is read, a match counts when it
    starts before ``own`` (the next part reads the overlap again and counts the rest)."""

    path: Path
    start: int
    own: int
    stop: int


class Scanner:
    """One search for many byte strings at once (Hyperscan's literal matcher, SIMD): each
    byte of a file is read once whatever the number of values, where one ``bytes.find``
    pass per value made the scan's time grow with the customer's number of values.

    Files are read in parts of ``PART_BYTES`` with ``preadv`` into a buffer per thread
    (no memory map: a file truncated meanwhile, such as a WAL, must not kill the node
    with SIGBUS), parts overlapping by the longest value less one byte, on up to
    ``SCAN_THREADS`` threads: Hyperscan and the reads release the GIL."""

    def __init__(self, needles: list[bytes]) -> None:
        self.needles = sorted({n for n in needles if n})
        self.longest = max((len(n) for n in self.needles), default=0)
        self._lengths = [len(n) for n in self.needles]
        self._database: Any = None
        if self.needles:
            self._database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            self._database.compile(expressions=self.needles,
                                   ids=list(range(len(self.needles))), flags=0, literal=True)
        self._local = threading.local()

    def file_parts(self, path: Path, size: int) -> list[Part]:
        if not self.needles:
            return []
        return [Part(path, start, min(size, start + PART_BYTES),
                     min(size, start + PART_BYTES + self.longest - 1))
                for start in range(0, size, PART_BYTES)]

    def page_parts(self, path: Path, pages: Pages) -> list[Part]:
        """Runs of adjacent pages, each read as one (a value may continue on the next
        page, not past the run)."""
        if not self.needles:
            return []
        parts: list[Part] = []
        for first, count in _runs(sorted(pages.numbers)):
            begin, end = (first - 1) * pages.size, (first - 1 + count) * pages.size
            parts.extend(Part(path, start, min(end, start + PART_BYTES),
                              min(end, start + PART_BYTES + self.longest - 1))
                         for start in range(begin, end, PART_BYTES))
        return parts

    def count(self, files: list[list[Part]]) -> list[int]:
        """Occurrences of any needle (overlapping ones each) per file's list of parts."""
        jobs = [(i, part) for i, parts in enumerate(files) for part in parts]
        counts = [0] * len(files)
        with ReadOnlyFiles() as opened:  # each file once for all its parts
            work = [(part, opened.fd(part.path)) for _, part in jobs]
            if sum(part.stop - part.start for _, part in jobs) <= SERIAL_BYTES \
                    or SCAN_THREADS == 1:
                # Small: handing parts to other threads would cost more than it saves.
                found = [self._part(part, fd) for part, fd in work]
            else:
                found = list(_pool().map(lambda job: self._part(*job), work))
        for (i, _), hits in zip(jobs, found, strict=True):
            counts[i] += hits
        return counts

    def _part(self, part: Part, fd: int | None) -> int:
        local = self._local
        if getattr(local, "scratch", None) is None:
            local.scratch = hyperscan.Scratch(self._database)  # one per thread
            local.buffer = bytearray(0)
        if len(local.buffer) < part.stop - part.start:  # as large as the largest part read
            local.buffer = bytearray(part.stop - part.start)
        if fd is None:  # gone since listed
            return 0
        try:
            read = os.preadv(fd, [memoryview(local.buffer)[:part.stop - part.start]],
                             part.start)
        except OSError:
            return 0
        own, lengths, hits = part.own - part.start, self._lengths, 0

        def matched(index: int, _start: int, end: int, _flags: int, _context: Any) -> None:
            nonlocal hits
            if end - lengths[index] < own:  # started in this part, not in the overlap
                hits += 1

        if read:
            with memoryview(local.buffer) as whole, whole[:read] as data:
                self._database.scan(data, match_event_handler=matched, scratch=local.scratch)
        return hits


class ReadOnlyFiles:
    """Descriptors to read files of the node home by, without breaking SQLite's locks.

    Closing any descriptor of a file releases every POSIX record lock this process holds on
    it (fcntl(2)), SQLite's own included: a scan that opened and closed ``vault.sqlite-shm``
    left the node holding no lock on its WAL index, so another process (a ``--workers``
    sibling, an operator's command) took it for unused and reset it under the node, which
    died of SIGBUS (found by a test; ``test_a_scan_keeps_sqlites_locks``). So a file this
    process already has open (SQLite's databases, WALs and shared-memory files) is read
    through that descriptor, with ``pread``, and never closed here; any other file is opened
    and closed again on ``close``."""

    def __init__(self) -> None:
        self._open: dict[tuple[int, int], int] | None = None
        self._by_path: dict[Path, int | None] = {}
        self._owned: list[int] = []

    def __enter__(self) -> ReadOnlyFiles:
        return self

    def __exit__(self, *_: object) -> None:
        for fd in self._owned:
            os.close(fd)
        self._owned.clear()

    def fd(self, path: Path) -> int | None:
        """A descriptor to read ``path`` by; None when it is gone."""
        if path not in self._by_path:
            self._by_path[path] = self._resolve(path)
        return self._by_path[path]

    def _resolve(self, path: Path) -> int | None:
        try:
            info = os.stat(path)
        except OSError:  # gone since listed (a temporary file): nothing left to hold a value
            return None
        if self._open is None:
            self._open = _descriptors()
        held = self._open.get((info.st_dev, info.st_ino))
        if held is not None:
            return held
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        self._owned.append(fd)
        return fd


def _descriptors() -> dict[tuple[int, int], int]:
    """This process's open, readable descriptors of regular files, by (device, inode)."""
    found: dict[tuple[int, int], int] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            info = os.fstat(int(name))
            mode = fcntl.fcntl(int(name), fcntl.F_GETFL) & os.O_ACCMODE
        except OSError:  # the listing's own descriptor, or one closed meanwhile
            continue
        # A write-only one (a log opened for appending) cannot be read by: open the file.
        if stat.S_ISREG(info.st_mode) and mode in (os.O_RDONLY, os.O_RDWR):
            found.setdefault((info.st_dev, info.st_ino), int(name))
    return found


PART_BYTES = 4 << 20  # fits the buffer in a core's cache while it is searched
SCAN_THREADS = min(4, os.cpu_count() or 1)
SERIAL_BYTES = 32 << 20  # up to this much in all, the calling thread reads it alone
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The scan's threads, started once per process (an erasure should not wait for new
    threads to be scheduled on a loaded machine); idle between erasures."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="erasure-scan")
        return _POOL


def _forget_pool() -> None:
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()  # a forked child has none of those threads


os.register_at_fork(after_in_child=_forget_pool)


def count_in_pages(path: Path, needles: list[bytes], pages: Pages) -> int:
    """Occurrences of any needle in those pages of ``path``, runs of adjacent pages read as
    one (a value may continue on the next page)."""
    scanner = Scanner(needles)
    return scanner.count([scanner.page_parts(path, pages)])[0]


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for number in numbers:
        if runs and runs[-1][0] + runs[-1][1] == number:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((number, 1))
    return runs


def count_in_file(path: Path, needles: list[bytes]) -> int:
    """Occurrences of any needle in the raw bytes of ``path`` (overlapping ones each)."""
    scanner = Scanner(needles)
    try:
        size = Path(path).stat().st_size
    except OSError:
        return 0
    return scanner.count([scanner.file_parts(Path(path), size)])[0]


def _customer(conn: sqlite3.Connection, did: str) -> locations.Customer:
    sids = tuple(r[0] for r in conn.execute("SELECT sid FROM bindings WHERE did = ? ORDER BY "
                                            "sid", (did,)))
    refs = tuple(r[0] for r in conn.execute(
        "SELECT subject_ref FROM subjects WHERE sid IN (SELECT value FROM json_each(?)) "
        "ORDER BY sid", (json.dumps(sids),)))
    from agent_node import grantstore

    grants = tuple(grantstore.ids_of(conn, did))
    return locations.Customer(did, sids, refs, grants)


def _holds(conn: sqlite3.Connection, did: str) -> bool:
    customer = _customer(conn, did)
    return bool(customer.sids or customer.grant_ids or _salt(conn, did))


def _salt(conn: sqlite3.Connection, did: str) -> str | None:
    from agent_node import accesslog

    return accesslog.salt_of(conn, did)


def _stored(column: Any) -> str:
    return encrypted_column(column.name) if column.encrypted else plain_column(column.name)


def _result(location: locations.Location, erased: locations.Erased) -> dict[str, Any]:
    return {"treatment": location.erasure, "rows": erased.rows, "kept": erased.kept,
            "digest": erased.digest}


def _swept(scan: dict[str, Any], needles: int,
           inside: dict[str, Any] | None = None) -> dict[str, Any]:
    """A sweep's record for one erasure of ``needles`` values: what was read, and where (file
    and location) any was found. ``inside``: the scan of those of its values that are part
    of values other customers hold (found wherever theirs are), counted apart, not hidden."""
    files = scan["files"]
    record = {"swept_at": _now(), "needles": needles, "files": len(files),
              "bytes": sum(f["bytes"] for f in files), "hits": _hits(files),
              "found_in": _found_in(files)}
    if inside is not None:
        record["inside_other_values"] = {"needles": inside["needles"],
                                         "hits": _hits(inside["files"]),
                                         "found_in": _found_in(inside["files"])}
    return record


def _hits(files: list[dict[str, Any]]) -> int:
    return sum(int(f["hits"]) for f in files)


def _found_in(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"path": f["path"], "location": f["location"], "hits": f["hits"]}
            for f in files if f["hits"]]


class Sweeper:
    """Runs ``Erasure.sweep`` on a thread of its own once asked (``request``, after each
    erasure the service carries out): the read of every file whole stays off the customer's
    request, and erasures that arrive together share one pass. A failed sweep is retried at
    the next request and when ``sov-node serve`` starts (``Erasure.resume``)."""

    def __init__(self, home: NodeHome, vault: Vault) -> None:
        self.home, self.vault = home, vault
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        with self._lock:
            self._idle.clear()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="erasure-sweep",
                                                daemon=True)
                self._thread.start()
        self._wake.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no sweep is asked for or running; whether that happened in time."""
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                Erasure(self.home, self.vault).sweep()
            except Exception as exc:  # the values wait, sealed, for the next try
                log.warning(json.dumps({"event": "erasure-sweep-failed",
                                        "error": type(exc).__name__}))
            with self._lock:
                if not self._wake.is_set():
                    self._idle.set()


def _valid_salt(value: Any) -> bool:
    if not isinstance(value, str) or len(value) != 64:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def _now() -> str:
    return iso(datetime.now(UTC))


locations.table("erasures", "agent_node.erasure", "a keyed tag of an erased customer's DID "
                "and their signed proof without the DID; while an erasure runs, the signed "
                "request, then the values to scan for (SM4-encrypted) until the proof is signed",
                "keep-opaque")
locations.table("erasure_steps", "agent_node.erasure", "while an erasure's first step is "
                "not yet followed by its vault step: what it destroyed in the activity "
                "database (row counts and SM3 digests, under a keyed tag of the DID)",
                "keep-opaque", database="activity")
locations.file("erasure-list", "agent_node.erasure", LIST_FILE, "opaque references of erased "
               "subjects and their proof digests (survives restores)", "keep-opaque")
