"""The node's hash-chained access log.

Each event's body (requester, purpose, grant ids, dataset, outcome, reason, time, and a digest
and count of the subject references used) is canonicalised with RFC 8785 and hashed with
SHA-256; the chain hash is ``SHA-256(prev_hash || body_digest)`` starting from 32 zero bytes.
A subject receives its own events in full and, for every other event in between, only
``(seq, body_digest, hash)``: enough to recompute the chain up to the node-signed head
without learning anything about other people's accesses.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from consent.canonical import canonicalize
from consent.identity import Identity
from consent.integrity import sign_document

GENESIS = "00" * 32
HEAD_TYPE = "AccessLogHead"


def body_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonicalize(body)).hexdigest()


def chain_hash(prev_hash: str, digest: str) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + bytes.fromhex(digest)).hexdigest()


def subjects_digest(subject_refs: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(subject_refs)).encode()).hexdigest()


def append(conn: sqlite3.Connection, body: dict[str, Any], sids: list[int],
           grant_ids: list[str]) -> tuple[int, str]:
    """Append one event inside the caller's transaction; returns (seq, hash)."""
    row = conn.execute("SELECT seq, hash FROM access_log ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
    body = {**body, "seq": seq}
    digest = body_digest(body)
    new_hash = chain_hash(prev, digest)
    conn.execute("INSERT INTO access_log (seq, time, body, body_digest, prev_hash, hash) "
                 "VALUES (?, ?, ?, ?, ?, ?)",
                 (seq, body["time"], json.dumps(body, sort_keys=True), digest, prev, new_hash))
    conn.executemany("INSERT OR IGNORE INTO access_subjects (sid, seq) VALUES (?, ?)",
                     [(sid, seq) for sid in sids])
    conn.executemany("INSERT OR IGNORE INTO access_grants (grant_id, seq) VALUES (?, ?)",
                     [(gid, seq) for gid in grant_ids])
    return seq, new_hash


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
    """Events touching ``sids`` or ``grant_ids`` (full) and the chain skeleton after them."""
    seqs: set[int] = set()
    for sid in sids:
        seqs.update(r[0] for r in conn.execute(
            "SELECT seq FROM access_subjects WHERE sid = ?", (sid,)))
    for gid in grant_ids:
        seqs.update(r[0] for r in conn.execute(
            "SELECT seq FROM access_grants WHERE grant_id = ?", (gid,)))
    events = []
    for seq in sorted(seqs):
        time, body, prev, hash_ = conn.execute(
            "SELECT time, body, prev_hash, hash FROM access_log WHERE seq = ?", (seq,)).fetchone()
        if since is not None and time < since:
            continue
        events.append({"body": json.loads(body), "prev_hash": prev, "hash": hash_})
    chain: list[list[Any]] = []
    if events:
        first = events[0]["body"]["seq"]
        chain = [list(r) for r in conn.execute(
            "SELECT seq, body_digest, hash FROM access_log WHERE seq >= ? ORDER BY seq",
            (first,))]
    return events, chain


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
