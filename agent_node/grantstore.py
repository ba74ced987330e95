"""The node's grants store: wallet-signed ConsentGrant credentials and ConsentRevocations
(W3C Verifiable Credentials with eddsa-jcs-2022 proofs, checked by ``consent.grants``).

A grant is accepted only if its proof verifies, it names this node, its window obeys the
node's policy and its subject is bound here. A revocation is accepted only from the grant's
own subject; it is committed before the acknowledgement is sent, and queries read the same
table, so it takes effect before the next answer.
"""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from agent_node import accesslog, locations, privacy, spend
from agent_node.errors import (
    AlreadyExists,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    RequestError,
    Unauthenticated,
)
from agent_node.vault import Vault, iso
from consent import errors as ce
from consent import grantstate
from consent.grants import Grant, verify_grant, verify_revocation

#: The grants table and its triggers live in the vault database beside ``meta`` (the consent
#: versions the triggers move); ``grant_usage`` goes where the per-query writes go (``{db}``).
SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (
  grant_id TEXT PRIMARY KEY, subject TEXT NOT NULL, requester TEXT NOT NULL,
  purpose TEXT NOT NULL, scopes TEXT NOT NULL, not_before REAL NOT NULL, expires REAL NOT NULL,
  max_queries INTEGER, dp_epsilon REAL, digest TEXT NOT NULL, credential TEXT NOT NULL,
  received_at TEXT NOT NULL, revoked_at TEXT, revocation TEXT);
CREATE INDEX IF NOT EXISTS grants_requester ON grants(requester, purpose);
CREATE INDEX IF NOT EXISTS grants_subject ON grants(subject);
CREATE TRIGGER IF NOT EXISTS consent_revoked AFTER UPDATE OF revoked_at ON grants BEGIN
  UPDATE meta SET value = value + 1 WHERE key = 'consent_version'; END;
CREATE TRIGGER IF NOT EXISTS consent_grant_gone AFTER DELETE ON grants BEGIN
  UPDATE meta SET value = value + 1 WHERE key = 'consent_version'; END;
CREATE TRIGGER IF NOT EXISTS consent_granted AFTER INSERT ON grants BEGIN
  UPDATE meta SET value = value + 1 WHERE key = 'grants_version'; END;
"""
USAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS {db}.grant_usage (
  grant_id TEXT PRIMARY KEY, queries_used INTEGER NOT NULL DEFAULT 0,
  epsilon_spent REAL NOT NULL DEFAULT 0, spent_micro INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID
"""
USAGE_TABLES = ("grant_usage",)


def ensure(conn: sqlite3.Connection) -> None:
    """Create the grants table and its triggers (outside a transaction; the vault's ``meta``
    exists already)."""
    conn.executescript(SCHEMA)


def ensure_usage(conn: sqlite3.Connection, db: str = "main") -> None:
    conn.execute(USAGE_SCHEMA.format(db=db))


def upgrade_usage(conn: sqlite3.Connection) -> None:
    """Vaults from before exact budgets kept only ``epsilon_spent`` (REAL): add the integer
    micro-epsilon counter, rounded up from it (a budget is never under-counted)."""
    def done() -> bool:
        return "spent_micro" in {r[1] for r in conn.execute("PRAGMA table_info(grant_usage)")}

    if done():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if done():  # another process upgraded it meanwhile
            conn.execute("COMMIT")
            return
        conn.execute("ALTER TABLE grant_usage ADD COLUMN spent_micro INTEGER NOT NULL DEFAULT 0")
        conn.executemany("UPDATE grant_usage SET spent_micro = ? WHERE grant_id = ?",
                         [(math.ceil(spent * 1_000_000), gid) for gid, spent in conn.execute(
                             "SELECT grant_id, epsilon_spent FROM grant_usage").fetchall()])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# -- what other modules read and write of the grants store (its only SQL) ---------------------

def active_rows(conn: sqlite3.Connection, requester: str, purpose: str
                ) -> list[tuple[Any, ...]]:
    """Unrevoked grants to ``requester`` for ``purpose``: (id, subject, scopes, not_before,
    expires, max_queries, dp_epsilon)."""
    return conn.execute(
        "SELECT grant_id, subject, scopes, not_before, expires, max_queries, dp_epsilon "
        "FROM grants WHERE requester = ? AND purpose = ? AND revoked_at IS NULL",
        (requester, purpose)).fetchall()


def terms(conn: sqlite3.Connection, grant_id: str) -> tuple[Any, ...] | None:
    """(subject, requester, purpose, scopes, not_before, expires, revoked_at, max_queries,
    dp_epsilon) of one grant, or None."""
    row = conn.execute(
        "SELECT subject, requester, purpose, scopes, not_before, expires, revoked_at, "
        "max_queries, dp_epsilon FROM grants WHERE grant_id = ?", (grant_id,)).fetchone()
    return tuple(row) if row else None


def held(conn: sqlite3.Connection, grant_ids: list[str]) -> list[str]:
    """Those of ``grant_ids`` this node holds, in the given order."""
    found = {r[0] for r in conn.execute("SELECT grant_id FROM grants WHERE grant_id IN "
                                        "(SELECT value FROM json_each(?))",
                                        (json.dumps(grant_ids),))}
    return [g for g in grant_ids if g in found]


def ids_of(conn: sqlite3.Connection, subject: str) -> list[str]:
    """The ids of every grant ``subject`` (a wallet DID) issued here, by id."""
    return [r[0] for r in conn.execute("SELECT grant_id FROM grants WHERE subject = ? "
                                       "ORDER BY grant_id", (subject,))]


def credentials_of(conn: sqlite3.Connection, subject: str) -> list[dict[str, Any]]:
    return [json.loads(r[0]) for r in conn.execute(
        "SELECT credential FROM grants WHERE subject = ? ORDER BY received_at, grant_id",
        (subject,))]


def credential(conn: sqlite3.Connection, grant_id: str) -> tuple[str, str, str] | None:
    """(subject, digest, credential JSON) of one grant, or None."""
    row = conn.execute("SELECT subject, digest, credential FROM grants WHERE grant_id = ?",
                       (grant_id,)).fetchone()
    return (row[0], row[1], row[2]) if row else None


def digests(conn: sqlite3.Connection, grant_ids: list[str]) -> dict[str, str]:
    """grant id -> its credential's digest, for those held."""
    return dict(conn.execute("SELECT grant_id, digest FROM grants WHERE grant_id IN "
                             "(SELECT value FROM json_each(?))", (json.dumps(grant_ids),)))


def subjects_of(conn: sqlite3.Connection, grant_ids: list[str]) -> set[str]:
    """The subjects (wallet DIDs) that issued these grants."""
    return {r[0] for r in conn.execute("SELECT DISTINCT subject FROM grants WHERE grant_id IN "
                                       "(SELECT value FROM json_each(?))",
                                       (json.dumps(sorted(set(grant_ids))),))}


def scopes_of(conn: sqlite3.Connection, grant_ids: list[str]) -> dict[str, set[str]]:
    return {gid: set(scopes.split(",")) for gid, scopes in conn.execute(
        "SELECT grant_id, scopes FROM grants WHERE grant_id IN (SELECT value FROM json_each(?))",
        (json.dumps(sorted(set(grant_ids))),))}


def requesters(conn: sqlite3.Connection) -> set[str]:
    """Every requester some customer granted to here."""
    return {r[0] for r in conn.execute("SELECT DISTINCT requester FROM grants")}


def query_limits(conn: sqlite3.Connection, grant_ids: list[str]) -> dict[str, int]:
    """grant id -> max_queries, for those of ``grant_ids`` that have one."""
    return dict(conn.execute(
        "SELECT grant_id, max_queries FROM grants WHERE max_queries IS NOT NULL AND grant_id IN "
        "(SELECT value FROM json_each(?))", (json.dumps(sorted(set(grant_ids))),)))


def counters(conn: sqlite3.Connection, grant_ids: list[str]) -> dict[str, tuple[int, int]]:
    """(queries used, micro-epsilon spent) debited per grant in ``grant_usage`` (threshold
    mode's max_queries counters, training, vaults from before the debit journal)."""
    return {gid: (int(q), int(m)) for gid, q, m in conn.execute(
        "SELECT grant_id, queries_used, spent_micro FROM grant_usage WHERE grant_id IN "
        "(SELECT value FROM json_each(?))", (json.dumps(sorted(set(grant_ids))),))}


def can_debit(conn: sqlite3.Connection, grant_ids: list[str], epsilon: int,
              budgets: dict[str, int]) -> bool:
    """Inside the write transaction: every grant still has a query (max_queries) and, for
    those in ``budgets``, ``epsilon`` micro-epsilon of its budget left (integers, exact)."""
    if not grant_ids:
        return True
    limits = query_limits(conn, grant_ids)
    used = counters(conn, grant_ids)
    for gid in grant_ids:
        queries, spent = used.get(gid, (0, 0))
        if gid in limits and queries >= limits[gid]:
            return False
        if gid in budgets and spent + epsilon > budgets[gid]:
            return False
    return True


def debit(conn: sqlite3.Connection, grant_ids: list[str], epsilon: int) -> None:
    """Debit one query and ``epsilon`` micro-epsilon from each grant's own counter (checked
    by ``can_debit`` earlier in the same transaction)."""
    if grant_ids:
        conn.execute("INSERT INTO grant_usage (grant_id, queries_used, spent_micro) "
                     "SELECT value, 1, ? FROM json_each(?) WHERE true "
                     "ON CONFLICT (grant_id) DO UPDATE SET queries_used = queries_used + 1, "
                     "spent_micro = spent_micro + excluded.spent_micro",
                     (epsilon, json.dumps(grant_ids)))


def carry_legacy_counters(conn: sqlite3.Connection) -> None:
    """Vaults from before ``grant_usage`` kept counters on the grant rows: copy them over
    (inside the caller's transaction; the access log's upgrade calls it)."""
    if "queries_used" in {r[1] for r in conn.execute("PRAGMA table_info(grants)")}:
        conn.execute("INSERT OR IGNORE INTO grant_usage (grant_id, queries_used, epsilon_spent) "
                     "SELECT grant_id, queries_used, epsilon_spent FROM grants "
                     "WHERE max_queries IS NOT NULL OR dp_epsilon IS NOT NULL")


def grant_error(exc: ce.ConsentError) -> RequestError:
    """Map a kernel rejection to the gRPC-facing error with the kernel's sentence."""
    text = str(exc)
    if isinstance(exc, ce.SignatureError):
        return Unauthenticated(f"the grant's proof does not verify ({text}); ask the wallet to "
                               "sign it again", reason="bad-signature")
    if isinstance(exc, ce.GrantExpired):
        return PreconditionFailed(f"{text}; ask the customer for a new grant", reason="expired")
    if isinstance(exc, ce.GrantNotYetValid):
        return PreconditionFailed(f"{text}; retry once it is valid", reason="not-yet-valid")
    return InvalidRequest(f"the grant is not acceptable: {text}", reason="bad-grant")


def _ts(moment: datetime) -> float:
    return moment.timestamp()


class GrantStore:
    def __init__(self, vault: Vault, node_did: str, *, max_ttl: timedelta,
                 clock_skew: timedelta, default_budget: float | None = None) -> None:
        self.vault = vault
        self.node_did = node_did
        self.max_ttl = max_ttl
        self.clock_skew = clock_skew
        #: dp mode: the budget of a grant whose wallet set none (None: threshold mode)
        self.default_budget = default_budget

    def verify(self, credential: Any, now: datetime) -> Grant:
        if not isinstance(credential, dict):
            raise InvalidRequest("the grant must be a signed ConsentGrant JSON object")
        try:
            grant = verify_grant(credential, now=now, max_ttl=self.max_ttl,
                                 clock_skew=self.clock_skew)
        except ce.ConsentError as exc:
            raise grant_error(exc) from None
        if self.node_did not in grant.nodes:
            raise PermissionDenied("the grant names other nodes, not this one; issue it for "
                                   "this node's DID (see GetNodeInfo)", reason="wrong-node")
        return grant

    def submit(self, credential: Any, now: datetime | None = None) -> tuple[Grant, str]:
        """Verify and store a grant; returns (grant, accepted_at). Idempotent per grant."""
        now = now or datetime.now(UTC)
        grant = self.verify(credential, now)
        with self.vault.transaction() as conn:
            if not self.vault.sids_for_did(conn, grant.subject):
                raise PreconditionFailed(
                    "the grant's subject is not bound to any customer at this node; ask the "
                    "operator to run 'sov-node subjects bind' first", reason="unbound-subject")
            row = conn.execute("SELECT digest, received_at FROM grants WHERE grant_id = ?",
                               (grant.id,)).fetchone()
            if row:
                if row[0] != grant.digest:
                    raise AlreadyExists("another grant with this id is already stored",
                                        reason="duplicate-id")
                return grant, row[1]
            accepted_at = iso(now)
            conn.execute(
                "INSERT INTO grants (grant_id, subject, requester, purpose, scopes, not_before, "
                "expires, max_queries, dp_epsilon, digest, credential, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (grant.id, grant.subject, grant.requester, grant.purpose,
                 ",".join(sorted(grant.scopes)), _ts(grant.not_before), _ts(grant.expires),
                 grant.max_queries, grant.dp_epsilon, grant.digest,
                 json.dumps(grant.credential), accepted_at))
        return grant, accepted_at

    def revoke(self, document: Any, now: datetime | None = None) -> tuple[str, str]:
        """Apply a subject-signed revocation; returns (grant_id, revoked_at)."""
        now = now or datetime.now(UTC)
        if not isinstance(document, dict):
            raise InvalidRequest("the revocation must be a signed ConsentRevocation object")
        try:
            revocation = verify_revocation(document)
        except ce.ConsentError as exc:
            raise Unauthenticated(f"the revocation is not acceptable: {exc}",
                                  reason="bad-revocation") from None
        with self.vault.transaction() as conn:
            row = conn.execute("SELECT subject, revoked_at FROM grants WHERE grant_id = ?",
                               (revocation.grant_id,)).fetchone()
            if row is None:
                raise NotFound("this node holds no grant with that id; check the grant id",
                               reason="unknown-grant")
            if row[0] != revocation.subject:
                raise PermissionDenied("only the grant's own subject may revoke it",
                                       reason="not-subject")
            if row[1]:
                return revocation.grant_id, row[1]
            revoked_at = iso(now)
            conn.execute("UPDATE grants SET revoked_at = ?, revocation = ? WHERE grant_id = ?",
                         (revoked_at, json.dumps(document), revocation.grant_id))
        return revocation.grant_id, revoked_at

    def status(self, caller: str, grant_ids: list[str], now: datetime | None = None
               ) -> list[dict[str, Any]]:
        """Status of the caller's grants (all of them when ``grant_ids`` is empty)."""
        now = now or datetime.now(UTC)
        with self.vault.connection() as conn:
            if grant_ids:
                rows = []
                for gid in grant_ids:
                    row = _grant_row(conn, gid)
                    if row is None:
                        raise NotFound(f"this node holds no grant {gid}", reason="unknown-grant")
                    if row["subject"] != caller:
                        raise PermissionDenied("only a grant's subject may ask for its status",
                                               reason="not-subject")
                    rows.append(row)
            else:
                rows = [_as_dict(conn, r) for r in conn.execute(
                    "SELECT * FROM grants WHERE subject = ? ORDER BY received_at", (caller,))]
            return [self._status(row, _usage(conn, row), now) for row in rows]

    def overview(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Every grant the node holds, as ``status`` gives it plus its ``subject`` DID, in the
        order they arrived (the operator's view: ``sov-node grants list``)."""
        now = now or datetime.now(UTC)
        with self.vault.connection() as conn:
            rows = [_as_dict(conn, r) for r in conn.execute(
                "SELECT * FROM grants ORDER BY received_at, grant_id")]
            return [{**self._status(row, _usage(conn, row), now), "subject": row["subject"]}
                    for row in rows]

    def _status(self, row: dict[str, Any], usage: tuple[int, int], now: datetime
                ) -> dict[str, Any]:
        """A grant's status; in dp mode with its budget (the wallet's, else the node's
        default), what was spent and what is left, exactly (micro-epsilon)."""
        status = _status(row, usage, now)
        budget = row["dp_epsilon"] or self.default_budget
        if budget is not None:
            total = privacy.to_micro(budget, up=False)
            status["epsilon_budget"] = privacy.from_micro(total)
            status["epsilon_left"] = privacy.from_micro(max(0, total - usage[1]))
        return status


def _usage(conn: sqlite3.Connection, row: dict[str, Any]) -> tuple[int, int]:
    """(queries used, micro-epsilon spent): grants with max_queries or a DP budget keep
    exact counts, debited atomically with each answer (grant_usage and, in dp mode, the
    debit journal of agent_node.spend); the others count their answered access events (and
    keep their epsilon in the journal too)."""
    found = spend.usage(conn, [row["grant_id"]]).get(row["grant_id"])
    spent = found[1] if found else 0
    if row["max_queries"] is None and not row["dp_epsilon"]:
        return accesslog.answered_with(conn, row["grant_id"]), spent
    return (int(found[0]), spent) if found else (0, 0)


def _as_dict(conn: sqlite3.Connection, row: tuple[Any, ...]) -> dict[str, Any]:
    names = [d[1] for d in conn.execute("PRAGMA table_info(grants)")]
    return dict(zip(names, row, strict=True))


def _grant_row(conn: sqlite3.Connection, grant_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM grants WHERE grant_id = ?", (grant_id,)).fetchone()
    return _as_dict(conn, row) if row else None


def _status(row: dict[str, Any], usage: tuple[int, int], now: datetime) -> dict[str, Any]:
    if row["revoked_at"]:
        state = grantstate.REVOKED
    elif now.timestamp() >= row["expires"]:
        state = grantstate.EXPIRED
    elif now.timestamp() < row["not_before"]:
        state = grantstate.NOT_YET_VALID
    else:
        state = grantstate.ACTIVE
    return {
        "grant_id": row["grant_id"], "status": state, "requester": row["requester"],
        "purpose": row["purpose"], "scopes": row["scopes"].split(","),
        "queries_used": usage[0], "max_queries": row["max_queries"],
        "epsilon_spent": privacy.from_micro(usage[1]), "dp_epsilon": row["dp_epsilon"],
        "expires": iso(datetime.fromtimestamp(row["expires"], UTC)),
        "revoked_at": row["revoked_at"],
    }


# -- erasure (issue 13): the grants store's locations -----------------------------------------

def _erase_grants(conn: sqlite3.Connection, customer: locations.Customer) -> locations.Erased:
    """Revoke the customer's grants (the consent version moves before the next answer), then
    delete them: each credential names the customer's DID and carries their signature. Grant
    ids stay in the access log's grant sets: random ids, which other proofs need."""
    conn.execute("UPDATE grants SET revoked_at = ? WHERE subject = ? AND revoked_at IS NULL",
                 (iso(datetime.now(UTC)), customer.did))
    return locations.delete_rows(conn, "grants", "subject = ?", (customer.did,))


def _erase_usage(conn: sqlite3.Connection, customer: locations.Customer) -> locations.Erased:
    return locations.delete_rows(conn, "grant_usage", "grant_id IN (SELECT value FROM "
                                 "json_each(?))", (locations.json_list(customer.grant_ids),))


locations.table("grants", "agent_node.grantstore", "the customer's signed grants (their DID, "
                "requester, purpose, scopes) and revocations", "delete", _erase_grants)
locations.table("grant_usage", "agent_node.grantstore", "queries and privacy budget used per "
                "grant id", "delete", _erase_usage, database="activity")
