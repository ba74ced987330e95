"""The node's hash-chained access log.

Each event's body (requester, purpose, dataset, outcome, reason, time, and the grants and
subject references the answer used) is canonicalised with RFC 8785 and hashed with SHA-256;
the chain hash is ``SHA-256(prev_hash || body_digest)`` starting from 32 zero bytes.
A subject receives its own events in full and, for every other event in between, only
``(seq, body_digest, hash)``: enough to recompute the chain up to the node-signed head
without learning anything about other people's accesses.

An event (format ``v`` = 2) names its grant set and its subject set only by their size and
their RFC 9162 Merkle tree hash (``grants_root``, ``subjects_root``): the leaves are the
members' UTF-8 bytes, distinct and in byte order, hashed ``SHA-256(0x00 || leaf)``. A
subject listing its events gets, beside each, inclusion proofs (RFC 9162 §2.1.3) of its own
grant ids and subject references, and never sees another customer's. Events written before
(no ``v``) listed every grant id and a plain digest of the subject references; they still
verify on the chain.

An event from the query engine also says its ``mode`` (``dp`` or ``threshold``), whether
it ``released`` anything and the ``epsilon`` each debited grant paid, and commits to a third
set, the grants left out because their privacy budget was spent (``left_out_count``,
``left_out_root``; stored as the event's ``left_out_set``), so a customer's listing proves
"left out: budget spent" the same way.

Which events touched whom is indexed through sets, not per event: an event references one
stored subject set (the sids whose data the answer used) and one grant set, each kept once
under its digest (``access_sets``, members in ``access_set_subjects`` / ``access_set_grants``).
A requester repeating questions over the same consenting population adds one ``access_log``
row per query, whatever the population's size.

Ledger anchoring (docs/audit.md, event type ``access_head``): chain heads are queued durably
in ``ledger_heads`` (one row per head sequence, the exact event bytes fixed at enqueue time so
a retry re-sends the same entry and the ledger deduplicates it), pushed when the ledger is
reachable, and the verified receipt is kept beside the row. An access event with
``seq <= sequence`` is covered by that head: the head's hash commits to the chain up to it.
Subject salts (``subject_salts``) are sent by the wallet with its grants, so that a head can
name the salted commitments ``SHA-256("sovereign-fabric/subject/v1" || salt || DID)`` of the
subjects whose data the events under it used, never the DIDs themselves.
"""

from __future__ import annotations

import array
import functools
import hashlib
import json
import sqlite3
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from agent_node.errors import AgentNodeError
from consent.canonical import canonicalize
from consent.identity import Identity
from consent.integrity import sign_document
from ledger.errors import InclusionProofError
from ledger.events import (
    MAX_ACCESS_ROWS,
    MAX_EVENT_BYTES,
    TOKEN,
    make_event,
    subject_commitment,
    subject_event_tag,
)
from ledger.merkle import SHA256, MemoryTree, inclusion_proof, root_hash, verify_inclusion

if TYPE_CHECKING:
    from agent_node.vault import Batch

GENESIS = "00" * 32
EVENT_VERSION = 2  # events commit to their grant and subject sets by Merkle roots
HEAD_TYPE = "AccessLogHead"
# A ledger event is at most 16 KiB (ledger.events.MAX_EVENT_BYTES), about 230 digests: the
# optional lists are left out of a head that would name more (the chain hash still covers all).
MAX_LISTED = 100

#: The log's tables; ``{db}``: the schema they live in.
LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS {db}.access_log (
  seq INTEGER PRIMARY KEY, time TEXT NOT NULL, body TEXT NOT NULL, body_digest TEXT NOT NULL,
  prev_hash TEXT NOT NULL, hash TEXT NOT NULL, subject_set INTEGER, grant_set INTEGER,
  answered INTEGER NOT NULL DEFAULT 0, left_out_set INTEGER);
CREATE TABLE IF NOT EXISTS {db}.access_sets (
  id INTEGER PRIMARY KEY, kind TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
  UNIQUE (kind, digest));
CREATE TABLE IF NOT EXISTS {db}.access_set_subjects (
  sid INTEGER NOT NULL, set_id INTEGER NOT NULL, PRIMARY KEY (sid, set_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {db}.access_set_grants (
  grant_id TEXT NOT NULL, set_id INTEGER NOT NULL, PRIMARY KEY (grant_id, set_id)) WITHOUT ROWID;
"""
LOG_TABLES = ("access_log", "access_sets", "access_set_subjects", "access_set_grants")


def ensure(conn: sqlite3.Connection, db: str = "main") -> None:
    """Create the log's tables, with their indexes, in schema ``db`` where they do not exist
    (``upgrade`` brings tables of an older layout up)."""
    fresh = not _columns(conn, "access_log", db)
    for statement in LOG_SCHEMA.format(db=db).split(";"):
        if statement.strip():
            conn.execute(statement)
    if fresh:
        for statement in LOG_INDEXES.format(db=db).split(";"):
            if statement.strip():
                conn.execute(statement)


LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_heads (
  sequence INTEGER PRIMARY KEY, hash TEXT NOT NULL, event TEXT NOT NULL, queued_at TEXT NOT NULL,
  receipt TEXT, anchored_at TEXT, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE INDEX IF NOT EXISTS ledger_heads_pending ON ledger_heads(sequence) WHERE receipt IS NULL;
CREATE TABLE IF NOT EXISTS subject_salts (
  did TEXT PRIMARY KEY, salt TEXT NOT NULL, received_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class AnchorQueueError(AgentNodeError):
    """A value for the ledger queue (a subject salt, a receipt) is malformed."""


def body_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonicalize(body)).hexdigest()


def chain_hash(prev_hash: str, digest: str) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + bytes.fromhex(digest)).hexdigest()


# -- set commitments (RFC 9162 Merkle trees over a set's members) --------------------------------

def _set_tree(members: Iterable[str]) -> tuple[MemoryTree, list[bytes]]:
    leaves = sorted({m.encode() for m in members})
    tree = MemoryTree(SHA256)
    tree.append_leaf_hashes([SHA256.leaf(leaf) for leaf in leaves])
    return tree, leaves


def set_commitment(members: Iterable[str]) -> tuple[int, str]:
    """(size, Merkle tree hash in hex) of a set of strings; the empty set's root is
    ``SHA-256("")``, as RFC 9162 defines the empty tree's."""
    tree, leaves = _set_tree(members)
    return len(leaves), root_hash(tree, len(leaves)).hex()


def membership_proofs(members: Iterable[str], wanted: Iterable[str]) -> list[dict[str, Any]]:
    """Inclusion proofs of those ``wanted`` strings that are members of the set:
    ``{"member", "index", "path": [hex, ...]}`` each, leaf-side first."""
    tree, leaves = _set_tree(members)
    index = {leaf: i for i, leaf in enumerate(leaves)}
    proofs = []
    for member in sorted(set(wanted)):
        at = index.get(member.encode())
        if at is not None:
            path = inclusion_proof(tree, at, len(leaves))
            proofs.append({"member": member, "index": at, "path": [h.hex() for h in path]})
    return proofs


def verify_membership(proof: Any, size: Any, root: Any) -> bool:
    """True if ``proof`` (from ``membership_proofs``) puts its member in the set of ``size``
    members whose root is ``root`` (hex); False for any defect, malformed input included."""
    try:
        verify_inclusion(SHA256, int(proof["index"]), int(size),
                         SHA256.leaf(str(proof["member"]).encode()),
                         [bytes.fromhex(h) for h in proof["path"]], bytes.fromhex(root))
    except (InclusionProofError, KeyError, TypeError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class PreparedEvent:
    """An event body canonicalised ahead of time, all but its ``seq``.

    RFC 8785 serialises an object as its members sorted by key, so the members before and
    after ``seq`` can be serialised outside the write transaction, and ``seq`` (known once
    the chain is locked) is put between them inside it: the bytes equal ``canonicalize(body)``.
    """

    time: str
    before: bytes  # the canonical members sorting before "seq", without braces
    after: bytes  # and those after it
    answered: bool = False  # outcome == "answered" (what GrantStatus counts as a query used)

    def canonical(self, seq: int) -> bytes:
        members = [part for part in (self.before, b'"seq":' + canonicalize(seq), self.after)
                   if part]
        return b"{" + b",".join(members) + b"}"


_SEQ_KEY = "seq".encode("utf-16-be")


def prepare(body: dict[str, Any]) -> PreparedEvent:
    """Canonicalise ``body`` (without ``seq``) in two halves around where ``seq`` goes."""
    if "seq" in body:
        raise ValueError("the access log assigns seq itself")
    # RFC 8785 orders member names by UTF-16 code units.
    before = {k: v for k, v in body.items() if k.encode("utf-16-be") < _SEQ_KEY}
    after = {k: v for k, v in body.items() if k not in before}
    return PreparedEvent(str(body["time"]), canonicalize(before)[1:-1] if before else b"",
                         canonicalize(after)[1:-1] if after else b"",
                         body.get("outcome") == "answered")


def append(conn: sqlite3.Connection, body: dict[str, Any] | PreparedEvent, sids: list[int],
           grant_ids: list[str], left_out: list[str] | None = None) -> tuple[int, str]:
    """Append one event inside the caller's transaction; returns (seq, hash)."""
    pending = _Pending(_last(conn))
    seq, new_hash = pending.add(body, set_id(conn, None, SUBJECT_SET, sids),
                                set_id(conn, None, GRANT_SET, grant_ids),
                                set_id(conn, None, GRANT_SET, left_out or []))
    pending.write(conn)
    return seq, new_hash


def append_batched(conn: sqlite3.Connection, batch: Batch,
                   body: dict[str, Any] | PreparedEvent, sids: list[int],
                   grant_ids: list[str], left_out: list[str] | None = None
                   ) -> tuple[int, str]:
    """Append one event in a group-commit batch (``agent_node.vault.Batch``); returns
    (seq, hash). The chain head is read once per batch and the rows of every event are
    written together just before the batch commits, in the same transaction. The event's
    subject set and grant set are stored once each (``set_id``): a requester asking again
    over the same population adds one access_log row and nothing else. ``left_out``: the
    grants whose privacy budget was too small for this answer (their customers were left
    out), stored as a grant set too."""
    pending = batch.memo.get("accesslog")
    if pending is None:
        pending = batch.memo["accesslog"] = _Pending(_last(conn))
        batch.before_commit("accesslog", pending.write)
    return pending.add(body, set_id(conn, batch, SUBJECT_SET, sids),
                       set_id(conn, batch, GRANT_SET, grant_ids),
                       set_id(conn, batch, GRANT_SET, left_out or []))


def _last(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT seq, hash FROM access_log ORDER BY seq DESC LIMIT 1").fetchone()
    return (row[0], row[1]) if row else (0, GENESIS)


class _Pending:
    """Events chained in memory from a known head, written in one statement."""

    def __init__(self, last: tuple[int, str]) -> None:
        self.seq, self.hash = last
        self.events: list[tuple[Any, ...]] = []

    def add(self, body: dict[str, Any] | PreparedEvent, subject_set: int | None,
            grant_set: int | None, left_out_set: int | None = None) -> tuple[int, str]:
        event = body if isinstance(body, PreparedEvent) else prepare(body)
        seq, prev = self.seq + 1, self.hash
        text = event.canonical(seq)
        digest = hashlib.sha256(text).hexdigest()
        self.seq, self.hash = seq, chain_hash(prev, digest)
        self.events.append((seq, event.time, text.decode(), digest, prev, self.hash,
                            subject_set, grant_set, int(event.answered), left_out_set))
        return seq, self.hash

    def write(self, conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT INTO access_log (seq, time, body, body_digest, prev_hash, hash, "
                         "subject_set, grant_set, answered, left_out_set) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         self.events)


# -- subject and grant sets ---------------------------------------------------------------------

SUBJECT_SET = "s"
GRANT_SET = "g"
SET_CACHE_SIZE = 65536


def set_digest(kind: str, members: list[int] | list[str]) -> str:
    """Identity of a set of subjects (sids) or grants (ids), independent of order."""
    return _set_digest(kind, tuple(members))


@functools.lru_cache(maxsize=64)  # a query names the same sets several times (issue 15)
def _set_digest(kind: str, members: tuple[int, ...] | tuple[str, ...]) -> str:
    # The kind says which members these are (casts only: the digest is on every query's path).
    if kind == SUBJECT_SET:
        data = array.array("q", sorted(set(cast("tuple[int, ...]", members)))).tobytes()
    else:
        data = "\n".join(sorted(set(cast("tuple[str, ...]", members)))).encode()
    return hashlib.sha256(kind.encode() + b"\0" + data).hexdigest()


def set_id(conn: sqlite3.Connection, batch: Batch | None, kind: str,
           members: list[int] | list[str]) -> int | None:
    """The id of the stored set with exactly these members, storing it if new (None when
    empty). Sets are append-only and never renumbered, so an id learnt from a committed
    batch stays valid: it is cached for the committer's lifetime (``Batch.cache``)."""
    if not members:
        return None
    digest = set_digest(kind, members)
    key = f"set:{kind}:{digest}"
    if batch is not None:
        known = batch.cache.get(key) or batch.memo.get(key)
        if known is not None:
            return int(known)
    row = conn.execute("SELECT id FROM access_sets WHERE kind = ? AND digest = ?",
                       (kind, digest)).fetchone()
    if row is not None:
        found = int(row[0])
    else:
        unique: list[int] | list[str] = sorted(set(cast("list[int]", members))) \
            if kind == SUBJECT_SET else sorted(set(cast("list[str]", members)))
        found = int(conn.execute("INSERT INTO access_sets (kind, digest, size) VALUES (?, ?, ?)",
                                 (kind, digest, len(unique))).lastrowid or 0)
        table, column = ("access_set_subjects", "sid") if kind == SUBJECT_SET \
            else ("access_set_grants", "grant_id")
        conn.executemany(f"INSERT INTO {table} ({column}, set_id) VALUES (?, ?)",
                         [(member, found) for member in unique])
    if batch is not None:
        batch.memo[key] = found
        batch.after_commit(lambda: _remember(batch.cache, key, found))
    return found


def _remember(cache: dict[str, Any], key: str, value: int) -> None:
    if len(cache) >= SET_CACHE_SIZE:
        cache.clear()
    cache[key] = value


def answered_with(conn: sqlite3.Connection, grant_id: str) -> int:
    """How many answered queries used ``grant_id`` (the count for grants without a budget;
    budgeted grants keep an exact counter in ``grant_usage``)."""
    row = conn.execute("SELECT COUNT(*) FROM access_log WHERE answered = 1 AND grant_set IN "
                       "(SELECT set_id FROM access_set_grants WHERE grant_id = ?)",
                       (grant_id,)).fetchone()
    return int(row[0])


LOG_INDEXES = """
CREATE INDEX IF NOT EXISTS {db}.access_log_subject_set ON access_log(subject_set);
CREATE INDEX IF NOT EXISTS {db}.access_log_grant_set ON access_log(grant_set);
CREATE INDEX IF NOT EXISTS {db}.access_log_left_out_set ON access_log(left_out_set)
  WHERE left_out_set IS NOT NULL;
CREATE INDEX IF NOT EXISTS {db}.access_set_subjects_members ON access_set_subjects(set_id, sid);
CREATE INDEX IF NOT EXISTS {db}.access_set_grants_members ON access_set_grants(set_id, grant_id);
"""


def upgrade(conn: sqlite3.Connection, db: str = "main") -> None:
    """Bring the access log in schema ``db`` to the set layout (idempotent; outside a
    transaction).

    Vaults written before it kept one (sid, seq) row per subject and one (grant, seq) row per
    grant of every event, and usage counters on every grant row: both are rebuilt here once,
    inside one transaction, so a crash leaves the old layout intact.
    """
    if not _columns(conn, "access_log", db):
        return  # moved away meanwhile (by another process starting at the same time)
    if "left_out_set" not in _columns(conn, "access_log", db):
        _add_left_out(conn, db)
    if _old_layout(conn, db):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _old_layout(conn, db):  # another process may have upgraded it meanwhile
                _upgrade_rows(conn, db)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    conn.executescript(LOG_INDEXES.format(db=db))


def _add_left_out(conn: sqlite3.Connection, db: str) -> None:
    """Events from before privacy budgets had no left-out grant set: add the column (NULL
    for them), once, even with several processes opening the vault."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if "left_out_set" not in _columns(conn, "access_log", db):
            conn.execute(f"ALTER TABLE {db}.access_log ADD COLUMN left_out_set INTEGER")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _columns(conn: sqlite3.Connection, table: str, db: str = "main") -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA {db}.table_info({table})")}


def _old_layout(conn: sqlite3.Connection, db: str) -> bool:
    return "subject_set" not in _columns(conn, "access_log", db)


def _upgrade_rows(conn: sqlite3.Connection, db: str) -> None:
    # Only a vault from before the activity database has this layout: its tables are all in
    # ``db`` (the vault), which unqualified names find first.
    for column in ("subject_set INTEGER", "grant_set INTEGER",
                   "answered INTEGER NOT NULL DEFAULT 0"):
        conn.execute(f"ALTER TABLE {db}.access_log ADD COLUMN {column}")
    conn.execute("UPDATE access_log SET answered = "
                 "(json_extract(body, '$.outcome') IS 'answered')")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for table, column, kind, key in (("access_subjects", "subject_set", SUBJECT_SET, "sid"),
                                     ("access_grants", "grant_set", GRANT_SET, "grant_id")):
        if table not in tables:
            continue
        members: dict[int, list[Any]] = {}
        for member, seq in conn.execute(f"SELECT {key}, seq FROM {table}"):
            members.setdefault(seq, []).append(member)
        conn.executemany(f"UPDATE access_log SET {column} = ? WHERE seq = ?",
                         [(set_id(conn, None, kind, m), seq) for seq, m in members.items()])
        conn.execute(f"DROP TABLE {table}")
    from agent_node import grantstore

    grantstore.carry_legacy_counters(conn)


def head(conn: sqlite3.Connection) -> dict[str, Any]:
    row = conn.execute("SELECT seq, hash, time FROM access_log ORDER BY seq DESC LIMIT 1")\
        .fetchone()
    if row is None:
        return {"seq": 0, "hash": GENESIS, "time": None}
    return {"seq": row[0], "hash": row[1], "time": row[2]}


def signed_head(conn: sqlite3.Connection, identity: Identity) -> dict[str, Any]:
    """The chain head signed by the node (what is exported to the ledger)."""
    document = {"type": HEAD_TYPE, "node": identity.did, **head(conn)}
    return sign_document(document, identity)


def events_for(conn: sqlite3.Connection, sids: list[int], grant_ids: list[str],
               since: str | None) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """Events touching ``sids`` or ``grant_ids`` (full, each with ``proofs`` of those
    subjects' references and grant ids in its sets) and the chain skeleton after them."""
    seqs: set[int] = set()
    if sids:
        seqs.update(r[0] for r in conn.execute(
            "SELECT seq FROM access_log WHERE subject_set IN (SELECT set_id FROM "
            "access_set_subjects WHERE sid IN (SELECT value FROM json_each(?)))",
            (json.dumps(sids),)))
    if grant_ids:
        seqs.update(r[0] for r in conn.execute(
            "SELECT seq FROM access_log WHERE grant_set IN (SELECT set_id FROM "
            "access_set_grants WHERE grant_id IN (SELECT value FROM json_each(?))) "
            "OR left_out_set IN (SELECT set_id FROM access_set_grants WHERE grant_id IN "
            "(SELECT value FROM json_each(?)))", (json.dumps(grant_ids), json.dumps(grant_ids))))
    own_refs = [r[0] for r in conn.execute(
        "SELECT subject_ref FROM subjects WHERE sid IN (SELECT value FROM json_each(?))",
        (json.dumps(sids),))]
    proofs = _SetProofs(conn, own_refs, grant_ids)
    events = []
    for seq in sorted(seqs):
        time, body, prev, hash_, subject_set, grant_set, left_out_set = conn.execute(
            "SELECT time, body, prev_hash, hash, subject_set, grant_set, left_out_set "
            "FROM access_log WHERE seq = ?", (seq,)).fetchone()
        if since is not None and time < since:
            continue
        event = {"body": json.loads(body), "prev_hash": prev, "hash": hash_}
        if event["body"].get("v") == EVENT_VERSION:
            event["proofs"] = {"grants": proofs.of(GRANT_SET, grant_set),
                               "subjects": proofs.of(SUBJECT_SET, subject_set)}
            if "left_out_root" in event["body"]:  # grants left out: their budget was spent
                event["proofs"]["left_out"] = proofs.of(GRANT_SET, left_out_set)
        events.append(event)
    chain: list[list[Any]] = []
    if events:
        first = events[0]["body"]["seq"]
        chain = [list(r) for r in conn.execute(
            "SELECT seq, body_digest, hash FROM access_log WHERE seq >= ? ORDER BY seq",
            (first,))]
    return events, chain


class _SetProofs:
    """Inclusion proofs of one caller's subject refs and grant ids in stored sets, each set
    read and hashed once per listing."""

    def __init__(self, conn: sqlite3.Connection, refs: list[str], grant_ids: list[str]) -> None:
        self.conn = conn
        self.wanted = {SUBJECT_SET: refs, GRANT_SET: grant_ids}
        self.done: dict[tuple[str, int], list[dict[str, Any]]] = {}

    def of(self, kind: str, set_id: int | None) -> list[dict[str, Any]]:
        if set_id is None:
            return []
        key = (kind, set_id)
        if key not in self.done:
            self.done[key] = membership_proofs(set_members(self.conn, kind, set_id),
                                               self.wanted[kind])
        return self.done[key]


def set_members(conn: sqlite3.Connection, kind: str, set_id: int) -> list[str]:
    """A stored set's members as its event commits to them: grant ids, or subject refs."""
    if kind == GRANT_SET:
        sql = "SELECT grant_id FROM access_set_grants WHERE set_id = ?"
    else:
        sql = ("SELECT s.subject_ref FROM access_set_subjects m JOIN subjects s USING (sid) "
               "WHERE m.set_id = ?")
    return [r[0] for r in conn.execute(sql, (set_id,))]


def operator_view(conn: sqlite3.Connection, since: str | None = None, limit: int = 100,
                  until: str | None = None) -> list[dict[str, Any]]:
    """The latest ``limit`` events (at or after ``since``, before ``until``: times written
    as the log writes them, to the second), oldest first, as the node's
    operator audits them: each body with the members of its sets (``grant_ids``,
    ``subject_refs``), ``sets_match`` (the stored sets hash to the event's roots; None for
    events from before set commitments) and ``chain_ok`` (its hash is SHA-256 of its
    ``prev_hash`` and body, and ``prev_hash`` is the hash of the event before it)."""
    rows = conn.execute(
        "SELECT * FROM (SELECT seq, body, prev_hash, hash, subject_set, grant_set, "
        "(SELECT hash FROM access_log p WHERE p.seq = a.seq - 1), left_out_set "
        "FROM access_log a WHERE (? IS NULL OR time >= ?) AND (? IS NULL OR time < ?) "
        "ORDER BY seq DESC LIMIT ?) ORDER BY seq", (since, since, until, until, limit)).fetchall()
    members: dict[tuple[str, int], list[str]] = {}

    def of(kind: str, set_id: int | None) -> list[str]:
        if set_id is None:
            return []
        if (kind, set_id) not in members:
            members[(kind, set_id)] = sorted(set_members(conn, kind, set_id))
        return members[(kind, set_id)]

    view = []
    for seq, text, prev, hash_, subject_set, grant_set, before, left_out_set in rows:
        try:
            body = json.loads(text)
        except ValueError:
            body = None  # an altered row: its chain link fails below
        body = body if isinstance(body, dict) else {}
        grants, refs = of(GRANT_SET, grant_set), of(SUBJECT_SET, subject_set)
        left_out = of(GRANT_SET, left_out_set)
        sets_match = None
        if body.get("v") == EVENT_VERSION:
            sets_match = (
                set_commitment(grants) == (body.get("grant_count"), body.get("grants_root"))
                and set_commitment(refs) == (body.get("subject_count"),
                                             body.get("subjects_root"))
                and ("left_out_root" not in body or set_commitment(left_out) == (
                    body.get("left_out_count"), body.get("left_out_root"))))
        chain_ok = (chain_hash(prev, _text_digest(conn, seq, text)) == hash_
                    and prev == (before if seq > 1 else GENESIS))
        view.append({**body, "seq": seq, "hash": hash_, "grant_ids": grants, "subject_refs": refs,
                     "left_out_grant_ids": left_out, "sets_match": sets_match,
                     "chain_ok": chain_ok})
    return view


def _text_digest(conn: sqlite3.Connection, seq: int, text: str) -> str:
    """The digest an event's stored body commits to; a body redacted by an erasure keeps
    its former digest (``REDACTED``), which the chain still checks."""
    if text == REDACTED:
        return str(conn.execute("SELECT body_digest FROM access_log WHERE seq = ?",
                                (seq,)).fetchone()[0])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ChainCheck:
    """Which events are proven to lie on the chain that ends at the signed head."""

    verified: dict[int, bool]
    chain_intact: bool


def verify_events(events: list[dict[str, Any]], chain: list[list[Any]],
                  head_seq: int, head_hash: str) -> ChainCheck:
    """Recompute the chain from the first event to the (already signature-checked) head."""
    if not events:
        return ChainCheck({}, True)
    links = {int(seq): (digest, hash_) for seq, digest, hash_ in chain}
    first = int(events[0]["body"]["seq"])
    prev = events[0]["prev_hash"]
    intact = True
    for seq in range(first, head_seq + 1):
        if seq not in links:
            intact = False
            break
        digest, hash_ = links[seq]
        if chain_hash(prev, digest) != hash_:
            intact = False
            break
        prev = hash_
    intact = intact and prev == head_hash
    verified = {}
    for event in events:
        seq = int(event["body"]["seq"])
        digest_ok = seq in links and body_digest(event["body"]) == links[seq][0]
        verified[seq] = bool(intact and digest_ok and links[seq][1] == event["hash"])
    return ChainCheck(verified, intact)


# -- ledger anchoring ---------------------------------------------------------------------------


def ensure_ledger_tables(conn: sqlite3.Connection) -> None:
    # One statement at a time: executescript would COMMIT the caller's open transaction.
    if _has_ledger_tables(conn):
        return
    for statement in LEDGER_SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def _has_ledger_tables(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                       "AND name IN ('ledger_heads', 'subject_salts', 'ledger_settings')")\
        .fetchone()
    return int(row[0]) == 3


def valid_salt(salt_hex: Any) -> bool:
    """A subject salt as the wallet sends it: 32 bytes as 64 hex characters."""
    if not isinstance(salt_hex, str) or len(salt_hex) != 64:
        return False
    try:
        bytes.fromhex(salt_hex)
    except ValueError:
        return False
    return True


def salt_of(conn: sqlite3.Connection, did: str) -> str | None:
    """The subject's commitment salt (hex), or None when its wallet never sent one."""
    if not _has_ledger_tables(conn):
        return None  # no salt was ever sent: the tables are not there
    row = conn.execute("SELECT salt FROM subject_salts WHERE did = ?", (did,)).fetchone()
    return str(row[0]) if row else None


def remember_salt(conn: sqlite3.Connection, did: str, salt_hex: Any, now: str) -> None:
    """Keep the subject's commitment salt (32 random bytes from its wallet, hex)."""
    if not valid_salt(salt_hex):
        raise AnchorQueueError("subject_salt must be 64 hex characters (32 random bytes)")
    ensure_ledger_tables(conn)
    conn.execute("INSERT INTO subject_salts (did, salt, received_at) VALUES (?, ?, ?) "
                 "ON CONFLICT(did) DO UPDATE SET salt = excluded.salt, "
                 "received_at = excluded.received_at", (did, salt_hex.lower(), now))


# Digests an access head may list in all (commitments, subject-event tags, grant digests):
# 200 x 67 bytes keeps the event well inside the ledger's 16 KiB with its other fields.
MAX_DIGESTS = 200


def _listed(conn: sqlite3.Connection, after: int, upto: int) -> dict[str, Any]:
    """What a head says about the events (after, upto]: ``after`` (where its range starts),
    the salted commitments of the subjects they touched, one tag per (subject, event)
    (``ledger.events.subject_event_tag``) so that each subject's wallet can tell exactly which
    of the events were its own, and the digests of the grants they used.

    "Touched" is what a subject's listing shows (``events_for``): its data was used, or one
    of its grants was named. Read-only and bounded: subjects are probed from the salted ones
    through the sets of the events in the range; a list longer than MAX_LISTED is left out
    rather than built in full, and the tags, then the grant digests, give way when the head
    would list more than MAX_DIGESTS digests (wallets then check commitments only).
    """
    listed: dict[str, Any] = {"after": after}
    tags: list[str] = []
    if _has_ledger_tables(conn):
        subjects = _touched_subjects(conn, after, upto)
        if subjects and len(subjects) <= MAX_LISTED:
            listed["subject_commitments"] = sorted(
                {subject_commitment(did, bytes.fromhex(salt)) for did, salt in subjects})
            for did, salt in subjects:
                tags += [subject_event_tag(did, bytes.fromhex(salt), seq)
                         for seq in _touched_seqs(conn, did, after, upto)]
    grant_ids = [r[0] for r in conn.execute(
        "SELECT DISTINCT grant_id FROM access_set_grants WHERE set_id IN (SELECT grant_set "
        "FROM access_log WHERE seq > ? AND seq <= ?) LIMIT ?", (after, upto, MAX_LISTED + 1))]
    digests: list[str] = []
    if len(grant_ids) <= MAX_LISTED:
        from agent_node import grantstore

        digests = sorted(set(grantstore.digests(conn, grant_ids).values()))
    room = MAX_DIGESTS - len(listed.get("subject_commitments", []))
    if tags and len(tags) <= min(room, MAX_LISTED):
        listed["subject_events"] = sorted(tags)
        room -= len(tags)
    if digests and len(digests) <= room:
        listed["grant_digests"] = digests
    return listed


def _own_grant_sets(column: str) -> str:
    """SQL: the event's ``column`` set holds one of the grant ids given as a JSON list."""
    return (f"l.{column} IN (SELECT m.set_id FROM access_set_grants m WHERE m.grant_id IN "
            "(SELECT value FROM json_each(?)))")


def _touched_subjects(conn: sqlite3.Connection, after: int, upto: int) -> list[tuple[str, str]]:
    """(DID, salt) of the salted subjects that events (after, upto] touched: through their
    subject sets, or their grants in the events' grant sets; at most MAX_LISTED + 1."""
    found = conn.execute(
        "SELECT DISTINCT b.did, t.salt FROM subject_salts t JOIN bindings b ON b.did = t.did "
        "WHERE EXISTS (SELECT 1 FROM access_set_subjects m JOIN access_log l "
        "ON l.subject_set = m.set_id WHERE m.sid = b.sid AND l.seq > ? AND l.seq <= ?) "
        "LIMIT ?", (after, upto, MAX_LISTED + 1)).fetchall()
    from agent_node import grantstore

    named = [r[0] for r in conn.execute(
        "SELECT DISTINCT m.grant_id FROM access_set_grants m JOIN access_log l ON "
        "(l.grant_set = m.set_id OR l.left_out_set = m.set_id) WHERE l.seq > ? AND l.seq <= ?",
        (after, upto))]
    granting = sorted(grantstore.subjects_of(conn, named))
    by_grant = conn.execute(
        "SELECT did, salt FROM subject_salts WHERE did IN (SELECT value FROM json_each(?)) "
        "LIMIT ?", (json.dumps(granting), MAX_LISTED + 1)).fetchall()
    return sorted({(str(d), str(s)) for d, s in [*found, *by_grant]})


def _touched_seqs(conn: sqlite3.Connection, did: str, after: int, upto: int) -> list[int]:
    """The events (after, upto] that touched ``did``, as its listing (``events_for``) finds
    them: its data in the subject set, or one of its grants in the grant (or left-out) set."""
    from agent_node import grantstore

    own = json.dumps(grantstore.ids_of(conn, did))
    return [r[0] for r in conn.execute(
        "SELECT l.seq FROM access_log l WHERE l.seq > ? AND l.seq <= ? AND ("
        "l.subject_set IN (SELECT m.set_id FROM access_set_subjects m JOIN bindings b "
        "ON b.sid = m.sid WHERE b.did = ?) OR " + _own_grant_sets("grant_set") + " OR "
        + _own_grant_sets("left_out_set") + ") ORDER BY l.seq", (after, upto, did, own, own))]


def head_event(conn: sqlite3.Connection, node_did: str) -> dict[str, Any] | None:
    """The ``access_head`` event for the current chain head, or None when the chain is empty
    or this head is queued already. Read-only: run it outside the write lock."""
    current = head(conn)
    if current["seq"] == 0:
        return None
    after = 0
    if _has_ledger_tables(conn):
        if conn.execute("SELECT 1 FROM ledger_heads WHERE sequence = ?",
                        (current["seq"],)).fetchone():
            return None
        after = int(conn.execute("SELECT max(sequence) FROM ledger_heads").fetchone()[0] or 0)
    listed = _listed(conn, after, current["seq"])
    event = make_event("access_head", node=node_did, head=current["hash"],
                       sequence=current["seq"], **listed, **access_summary(conn, after,
                                                                            current["seq"]))
    if len(canonicalize(event)) > MAX_EVENT_BYTES:  # the lists come first: wallets check them
        event.pop("accesses", None)
    return event


def access_summary(conn: sqlite3.Connection, after: int, upto: int) -> dict[str, Any]:
    """The head's summary, ledger field ``accesses``: how many events in (after, upto] had
    each requester, purpose, scopes, outcome and (refusals) reason, for a compliance officer.

    Only organisations' DIDs and vocabulary words are named: a requester is named only when
    some customer granted to it at this node (an unknown caller's DID may be anyone's), a
    purpose only from the consent vocabulary. ``scopes`` are the event's own when it names
    them, else the tiers every grant the event used covers. ``nothing-released`` is an
    answer that released no value (``released`` false or 0). Read-only, one grouped scan.
    """
    from agent_node import grantstore
    from consent.grants import PURPOSES, Scope

    requesters = grantstore.requesters(conn)
    grouped = conn.execute(
        "SELECT json_extract(body, '$.requester'), json_extract(body, '$.purpose'), "
        "json_extract(body, '$.outcome'), json_extract(body, '$.reason'), "
        "json_extract(body, '$.released'), json_extract(body, '$.scopes'), grant_set, count(*) "
        "FROM access_log WHERE seq > ? AND seq <= ? AND json_valid(body) "
        "GROUP BY 1, 2, 3, 4, 5, 6, 7 LIMIT ?", (after, upto, SUMMARY_SCAN_LIMIT + 1)).fetchall()
    if not grouped or len(grouped) > SUMMARY_SCAN_LIMIT:
        return {}
    tiers = {s.value for s in Scope}
    covered = _grant_set_scopes(conn, {r[6] for r in grouped if r[6] is not None and not r[5]})
    counts: dict[tuple[Any, ...], int] = {}
    for requester, purpose, outcome, reason, released, scopes, grant_set, n in grouped:
        if outcome == "answered" and released is not None and not released:
            outcome = "nothing-released"
        named = json.loads(scopes) if isinstance(scopes, str) else covered.get(grant_set, [])
        key = (requester if requester in requesters else None,
               purpose if purpose in PURPOSES else None,
               tuple(sorted({t for t in named if t in tiers})) if isinstance(named, list) else (),
               outcome if is_token(outcome) else "unknown",
               reason if outcome != "answered" and is_token(reason) else None)
        counts[key] = counts.get(key, 0) + int(n)
    return {"accesses": _summary_rows(counts)}


SUMMARY_SCAN_LIMIT = 10_000  # distinct groups read per head; more leave the summary out
is_token = TOKEN[0]


def _grant_set_scopes(conn: sqlite3.Connection, set_ids: set[int]) -> dict[int, list[str]]:
    """Per grant set, the scope tiers every one of its grants covers."""
    from agent_node import grantstore

    members = conn.execute("SELECT set_id, grant_id FROM access_set_grants WHERE set_id IN "
                           "(SELECT value FROM json_each(?))",
                           (json.dumps(sorted(set_ids)),)).fetchall()
    scopes = grantstore.scopes_of(conn, [gid for _, gid in members])
    found: dict[int, set[str]] = {}
    for set_id, gid in members:
        if gid not in scopes:
            continue  # a grant no longer held (erased): as the join left it out before
        granted = scopes[gid]
        found[set_id] = found[set_id] & granted if set_id in found else granted
    return {k: sorted(v) for k, v in found.items()}


def _summary_rows(counts: dict[tuple[Any, ...], int]) -> list[dict[str, Any]]:
    """Rows, most frequent first; past MAX_ACCESS_ROWS the rest merge into one row per
    outcome (totals stay exact, the detail of the rarest goes)."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    rest: dict[str, int] = {}
    while len(ranked) + len(rest) > MAX_ACCESS_ROWS:
        key, n = ranked.pop()
        rest[key[3]] = rest.get(key[3], 0) + n
    rows = []
    for (requester, purpose, scopes, outcome, reason), n in ranked:
        row: dict[str, Any] = {"outcome": outcome, "count": n}
        for name, value in (("requester", requester), ("purpose", purpose),
                            ("scopes", list(scopes)), ("reason", reason)):
            if value:
                row[name] = value
        rows.append(row)
    rows.extend({"outcome": outcome, "count": n} for outcome, n in sorted(rest.items()))
    return rows


def queue_head(conn: sqlite3.Connection, event: dict[str, Any]) -> int | None:
    """Queue a head event (inside the caller's write transaction); None if queued already."""
    ensure_ledger_tables(conn)
    cursor = conn.execute(
        "INSERT OR IGNORE INTO ledger_heads (sequence, hash, event, queued_at) "
        "VALUES (?, ?, ?, ?)",
        (event["sequence"], event["head"], json.dumps(event, sort_keys=True), event["time"]))
    return int(event["sequence"]) if cursor.rowcount else None


def enqueue_head(conn: sqlite3.Connection, node_did: str) -> int | None:
    """Build and queue the current head in one go (inside the caller's write transaction)."""
    event = head_event(conn, node_did)
    return None if event is None else queue_head(conn, event)


@dataclass(frozen=True)
class QueuedHead:
    sequence: int
    hash: str
    event: dict[str, Any]


def pending_heads(conn: sqlite3.Connection, limit: int = 256) -> list[QueuedHead]:
    """Heads queued but not yet anchored, oldest first."""
    if not _has_ledger_tables(conn):
        return []
    return [QueuedHead(int(seq), hash_, json.loads(event)) for seq, hash_, event in conn.execute(
        "SELECT sequence, hash, event FROM ledger_heads WHERE receipt IS NULL "
        "ORDER BY sequence LIMIT ?", (limit,))]


def store_receipt(conn: sqlite3.Connection, sequence: int, receipt: dict[str, Any],
                  now: str) -> None:
    """Keep the verified receipt of an anchored head (the caller verified it)."""
    conn.execute("UPDATE ledger_heads SET receipt = ?, anchored_at = ?, last_error = NULL, "
                 "attempts = attempts + 1 WHERE sequence = ? AND receipt IS NULL",
                 (json.dumps(receipt, sort_keys=True), now, sequence))


def mark_attempt_failed(conn: sqlite3.Connection, sequences: list[int], error: str) -> None:
    conn.executemany("UPDATE ledger_heads SET attempts = attempts + 1, last_error = ? "
                     "WHERE sequence = ?", [(error, seq) for seq in sequences])


@dataclass(frozen=True)
class AnchoredHead:
    sequence: int
    hash: str
    receipt: dict[str, Any]
    anchored_at: str


def anchored_heads(conn: sqlite3.Connection) -> list[AnchoredHead]:
    if not _has_ledger_tables(conn):
        return []
    return [AnchoredHead(int(seq), hash_, json.loads(receipt), at) for seq, hash_, receipt, at
            in conn.execute("SELECT sequence, hash, receipt, anchored_at FROM ledger_heads "
                            "WHERE receipt IS NOT NULL ORDER BY sequence")]


def queue_counts(conn: sqlite3.Connection) -> tuple[int, int]:
    """(anchored, pending) head counts."""
    if not _has_ledger_tables(conn):
        return 0, 0
    anchored, pending = conn.execute(
        "SELECT count(receipt), count(*) - count(receipt) FROM ledger_heads").fetchone()
    return int(anchored), int(pending)


def anchors_covering(conn: sqlite3.Connection, seqs: list[int]) -> list[dict[str, Any]]:
    """For each event seq, the earliest anchored head at or after it (the one to check)."""
    if not seqs or not _has_ledger_tables(conn):
        return []
    anchored = [r[0] for r in conn.execute(
        "SELECT sequence FROM ledger_heads WHERE receipt IS NOT NULL AND sequence >= ? "
        "ORDER BY sequence", (min(seqs),))]
    chosen = sorted({anchored[i] for i in (bisect_left(anchored, s) for s in seqs)
                     if i < len(anchored)})
    rows = conn.execute("SELECT sequence, hash, receipt FROM ledger_heads WHERE sequence IN "
                        "(SELECT value FROM json_each(?)) ORDER BY sequence",
                        (json.dumps(chosen),))
    return [{"sequence": seq, "hash": hash_, "receipt": json.loads(receipt)}
            for seq, hash_, receipt in rows]


def get_setting(conn: sqlite3.Connection, key: str) -> str | None:
    if not _has_ledger_tables(conn):
        return None
    row = conn.execute("SELECT value FROM ledger_settings WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_setting(conn: sqlite3.Connection, key: str, value: str) -> None:
    ensure_ledger_tables(conn)
    conn.execute("INSERT INTO ledger_settings (key, value) VALUES (?, ?) "
                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))


# -- erasure (issue 13): the access log's locations -----------------------------------------------

#: What an erased event's body becomes: the row keeps ``body_digest``, ``prev_hash`` and
#: ``hash``, so the chain (and every other customer's listing) still verifies from digests.
REDACTED = '{"redacted":"erasure"}'


def _redact_events(conn: sqlite3.Connection, customer: Any) -> Any:
    """Redact the bodies of events that name the customer's DID (calls the node logged under
    them as sender, e.g. a refused or replayed request of theirs)."""
    from agent_node import locations

    rows = conn.execute("SELECT seq, body FROM access_log WHERE instr(body, ?) > 0 "
                        "AND body != ?", (customer.did, REDACTED)).fetchall()
    conn.executemany("UPDATE access_log SET body = ? WHERE seq = ?",
                     [(REDACTED, seq) for seq, _ in rows])
    return locations.Erased(len(rows), locations.digest_rows(rows))


def _erase_salt(conn: sqlite3.Connection, customer: Any) -> Any:
    from agent_node import locations

    if not _has_ledger_tables(conn):
        return locations.Erased(0, locations.EMPTY_DIGEST)
    return locations.delete_rows(conn, "subject_salts", "did = ?", (customer.did,))


def _register() -> None:
    from agent_node import locations

    owner = "agent_node.accesslog"
    locations.table("access_log", owner, "event bodies (requester, purpose, outcome, set "
                    "roots); an event logged under the customer as sender names their DID",
                    "redact", _redact_events, database="activity")
    locations.table("access_sets", owner, "", "none", database="activity")
    locations.table("access_set_subjects", owner, "opaque sids of the subjects each event "
                    "used (other customers' Merkle proofs need their references)", "keep-opaque",
                    database="activity")
    locations.table("access_set_grants", owner, "random grant ids each event used",
                    "keep-opaque", database="activity")
    locations.table("ledger_heads", owner, "salted subject commitments and event tags, "
                    "unlinkable once the customer's salt is destroyed", "keep-opaque")
    locations.table("subject_salts", owner, "the customer's DID and commitment salt",
                    "delete", _erase_salt)
    locations.table("ledger_settings", owner, "", "none")


_register()
