"""Erasure (issue 13) on a real vault in one process: the data-location registry accounts for
every table and every file holding a customer's markers; an erasure leaves none of them in any
byte of the node home; the proof verifies and any change to it does not; other customers'
access-log proofs still verify; the customer never comes back through a sync; bad requests
change nothing."""

from __future__ import annotations

import copy
import json
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_node import accesslog, locations
from agent_node.erasure import Erasure, count_in_file
from agent_node.errors import InvalidRequest, NotFound, PermissionDenied, Unauthenticated
from agent_node.vault import sync
from consent.grants import issue_grant
from consent.identity import Identity
from consent.integrity import sign_document
from ledger import erasure as protocol
from tests.agent_node.conftest import THRESHOLD, InProcessNode, in_process_node

MARKERS = {"job": "zq-marker-job-4711", "education": "zq-marker-edu-4711",
           "y": "zq-marker-y-4711"}


def _rows(bank_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Customer C000 gets a marker in every tier (transaction, identity, sentiment)."""
    rows = copy.deepcopy(bank_rows)
    for row in rows:
        if row["customer_id"] == "C000":
            row.update(MARKERS)
    return rows


def _use(node: InProcessNode) -> tuple[Identity, list[str]]:
    """A demo-like run: every customer grants (with a salt), a requester asks, customers
    list their events."""
    requester = Identity.generate()
    ids = []
    for wallet in node.wallets:
        credential = issue_grant(wallet, requester=requester.did, nodes=[node.home.identity.did],
                                 purpose="marketing-analytics",
                                 scopes=["transaction", "identity", "sentiment"],
                                 ttl=timedelta(hours=24))
        grant, at = node.store.submit(credential)
        ids.append(grant.id)
        with node.vault.transaction() as conn:
            accesslog.remember_salt(conn, wallet.did, secrets.token_hex(32), at)
    for group in ("job", "education"):
        node.engine.run({"dataset": "contacts", "measures": ["count"],
                         "group_by": [group], "purpose": "marketing-analytics"}, requester.did)
    # A refusal logged under the customer as its sender: their DID in an event body.
    with pytest.raises(InvalidRequest):
        node.engine.run({"dataset": "nope", "measures": ["count"],
                         "purpose": "marketing-analytics"}, node.wallets[0].did)
    return requester, ids


@pytest.fixture(scope="module")
def used(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]
         ) -> tuple[InProcessNode, Identity, list[str]]:
    node = in_process_node(tmp_path_factory.mktemp("erasure"), _rows(bank_rows), "erasure-node",
                           THRESHOLD)
    requester, ids = _use(node)
    return node, requester, ids


def _needles(node: InProcessNode) -> list[bytes]:
    return [m.encode() for m in MARKERS.values()] + [node.wallets[0].did.encode()]


def _hits(home: Path, needles: list[bytes]) -> dict[str, int]:
    found = {}
    for relative in locations.home_files(home):
        hits = count_in_file(home / relative, needles)
        if hits:
            found[relative] = hits
    return found


def test_every_table_and_file_holding_customer_data_is_registered(
        used: tuple[InProcessNode, Identity, list[str]]) -> None:
    node, _, _ = used
    with node.vault.connection() as conn:
        assert locations.unregistered_tables(conn) == []
        for table in locations.vault_tables(conn):
            columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
            text = " || ".join(f'coalesce(CAST("{c}" AS TEXT), \'\')' for c in columns)
            for marker in [*MARKERS.values(), node.wallets[0].did]:
                held = conn.execute(f'SELECT count(*) FROM "{table}" WHERE instr({text}, ?)',
                                    (marker,)).fetchone()[0]
                if held:
                    location = locations.table_location(table)
                    assert location is not None and location.erasure != "none", table
    found = _hits(node.home.path, _needles(node))
    assert found, "the markers must be somewhere before the erasure"
    for relative in found:
        location = locations.file_location(relative)
        assert location is not None and location.erasure != "none", relative


def test_an_unregistered_table_is_found(tmp_path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(tmp_path / "x.sqlite")
    conn.execute("CREATE TABLE grants (x)")
    conn.execute("CREATE TABLE shadow_copy (x)")
    assert locations.unregistered_tables(conn) == ["shadow_copy"]


def test_bad_requests_are_refused_and_change_nothing(
        used: tuple[InProcessNode, Identity, list[str]]) -> None:
    node, _, _ = used
    erasure = Erasure(node.home, node.vault)
    alice, bob = node.wallets[0], node.wallets[1]
    node_did = node.home.identity.did
    before = _snapshot(node)
    altered = protocol.issue_request(bob, node_did)
    altered["subject"] = alice.did  # bob's signature, alice's name
    unsigned = {k: v for k, v in altered.items() if k != "proof"}
    cases = [
        (altered, None, Unauthenticated, "signature does not verify"),
        (sign_document(unsigned, bob), None, Unauthenticated, "not signed by the customer"),
        ({k: v for k, v in protocol.issue_request(alice, node_did).items() if k != "proof"},
         None, Unauthenticated, "signature"),
        (protocol.issue_request(alice, node_did), bob.did, PermissionDenied, "another customer"),
        (protocol.issue_request(alice, "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"),
         None, PermissionDenied, "another node"),
        (protocol.issue_request(Identity.generate(), node_did), None, NotFound, "holds nothing"),
        (protocol.issue_request(alice, node_did, now=datetime.now(UTC) - timedelta(days=31)),
         None, Unauthenticated, "older than 30 days"),
    ]
    for request, caller, error, words in cases:
        with pytest.raises(error, match=words):
            erasure.erase(request, caller=caller)
    assert _snapshot(node) == before


def _snapshot(node: InProcessNode) -> list[Any]:
    with node.vault.connection() as conn:
        return [conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                for t in locations.vault_tables(conn)]


def test_erasure_leaves_no_byte_and_a_verifiable_proof(
        used: tuple[InProcessNode, Identity, list[str]]) -> None:
    node, _, ids = used
    alice, bob = node.wallets[0], node.wallets[1]
    with node.vault.connection() as conn:
        bob_sids = node.vault.sids_for_did(conn, bob.did)
        bob_before, _ = accesslog.events_for(conn, bob_sids, [ids[1]], None)
    with node.vault.connection() as conn:
        wrapped = [w for (w,) in conn.execute(
            "SELECT wrapped_key FROM subjects WHERE sid IN (SELECT sid FROM bindings WHERE "
            "did = ?)", (alice.did,))]
    assert wrapped and all(len(w) >= 16 for w in wrapped)
    erasure = Erasure(node.home, node.vault)
    request = protocol.issue_request(alice, node.home.identity.did)
    outcome = erasure.erase(request, caller=alice.did)
    proof = outcome.proof
    assert protocol.verify_proof(proof, node_did=node.home.identity.did, customer=alice.did,
                                 request=request) == node.home.identity.did
    # Every byte of the node home: no marker, no DID.
    assert _hits(node.home.path, _needles(node)) == {}
    assert protocol.scan_hits(proof) == 0 and proof["scan"]["needles"] >= 4
    # The default scan reads every other file whole, the vault where her rows were and its
    # free pages; the sweep of every file whole, the vault included, follows.
    vault_entry = next(f for f in proof["scan"]["files"] if f["path"] == "vault.sqlite")
    assert proof["scan"]["vault"] == "rewritten and free pages" and vault_entry["pages"] >= 1
    assert all("pages" not in f for f in proof["scan"]["files"] if f is not vault_entry)
    assert outcome.sweep == {"state": "pending"}
    assert erasure.sweep() == 1 and erasure.sweep() == 0  # once
    # Her wrapped data key is in no byte of the home once the sweep checkpointed.
    assert _hits(node.home.path, [bytes(w) for w in wrapped]) == {}
    swept = erasure.outcome(alice.did).sweep
    assert swept is not None and swept["hits"] == 0 and swept["found_in"] == []
    assert swept["needles"] == proof["scan"]["needles"]
    assert swept["bytes"] >= (node.home.path / "vault.sqlite").stat().st_size
    by_name = {loc["name"]: loc for loc in proof["locations"]}
    assert by_name["vault.dataset_rows"]["rows"] == 6
    assert by_name["vault.grants"]["rows"] == 1 and by_name["vault.subject_salts"]["rows"] == 1
    assert by_name["vault.access_log"]["rows"] == 1  # the refusal under alice's DID, redacted
    assert by_name["vault.subjects"]["kept"] == 1  # her reference is in others' access sets
    assert len(proof["destroyed_keys"]) == 1 and proof["salt_destroyed"] is True
    assert outcome.entry is not None and outcome.entry["type"] == "erasure"
    protocol.check_entry(proof, outcome.entry)
    # The same request, or a new one, returns the same proof.
    again = erasure.erase(protocol.issue_request(alice, node.home.identity.did))
    assert again.proof == proof
    # Another customer's listing still verifies: chain and Merkle proofs.
    with node.vault.connection() as conn:
        events, chain = accesslog.events_for(conn, bob_sids, [ids[1]], None)
        head = accesslog.head(conn)
        view = accesslog.operator_view(conn, limit=1000)
    assert [e["body"] for e in events] == [e["body"] for e in bob_before]
    check = accesslog.verify_events(events, chain, head["seq"], head["hash"])
    assert check.chain_intact and all(check.verified.values())
    for event in events:
        body = event["body"]
        for proof_ in event["proofs"]["subjects"]:
            assert accesslog.verify_membership(proof_, body["subject_count"],
                                               body["subjects_root"])
    assert all(e["chain_ok"] for e in view)  # the redacted body keeps its digest
    # A sync from the source (which still holds her rows) never brings her back.
    stats = sync(node.vault, node.home.datamap())
    assert stats[0].inserted == 0
    assert _hits(node.home.path, _needles(node)) == {}


@pytest.mark.parametrize("field", sorted(protocol.PROOF_FIELDS - {"proof"}))
def test_a_proof_changed_in_any_field_fails(
        used: tuple[InProcessNode, Identity, list[str]], field: str) -> None:
    node, _, _ = used
    erasure = Erasure(node.home, node.vault)
    # Under xdist this test may run in a worker where the erasure test did not: erase here
    # then (a repeated request returns the same proof, so the order does not matter).
    alice = node.wallets[0]
    proof = erasure.erase(protocol.issue_request(alice, node.home.identity.did),
                          caller=alice.did).proof
    changed = json.loads(json.dumps(proof))
    value = changed[field]
    if isinstance(value, str):
        changed[field] = value[:-1] + ("0" if value[-1] != "0" else "1")
    elif isinstance(value, bool):
        changed[field] = not value
    elif isinstance(value, int):
        changed[field] = value + 1
    elif isinstance(value, list):
        changed[field] = value[:-1] if value else ["x"]
    else:
        changed[field] = {**value, "needles": 0}
    with pytest.raises(protocol.ErasureError):
        protocol.verify_proof(changed)


def test_the_rewritten_pages_scan_finds_what_a_deletion_left(tmp_path: Path) -> None:
    """The pages a committed delete rewrote are read from the WAL; a marker left in them (here:
    without secure_delete) is found, and one in a page the delete did not touch is not read."""
    import sqlite3

    from agent_node.erasure import count_in_pages, rewritten_pages

    path = tmp_path / "v.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA secure_delete=OFF")
    db.execute("CREATE TABLE a (x TEXT)")
    db.execute("CREATE TABLE b (x TEXT)")
    db.executemany("INSERT INTO a VALUES (?)", [("zq-gone-4711",), ("kept",)])
    db.execute("INSERT INTO b VALUES ('zq-other-4711')")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("UPDATE a SET x = 'zq-gone-4711 moved' WHERE x = 'kept'")  # the "deletion"
    pages = rewritten_pages(path)
    assert pages is not None and pages.size == 4096
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert count_in_pages(path, [b"zq-gone-4711"], pages) == 2
    assert count_in_pages(path, [b"zq-other-4711"], pages) == 0  # table b was not rewritten
    assert rewritten_pages(path) is None  # truncated WAL: the caller scans the whole vault
    db.close()


def test_free_pages_are_read_from_the_freelist(tmp_path: Path) -> None:
    """Pages a deletion put on the freelist (kept unzeroed here: secure_delete off) are
    listed, so the scan reads them; a database without free pages lists none."""
    import sqlite3

    from agent_node.erasure import Pages, count_in_pages, free_pages

    path = tmp_path / "v.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA secure_delete=OFF")
    db.execute("CREATE TABLE a (x TEXT)")
    assert free_pages(path) == frozenset()
    db.executemany("INSERT INTO a VALUES (?)", [(f"zq-freed-4711 {'x' * 3000} {i}",)
                                                for i in range(40)])
    db.execute("DELETE FROM a")
    free = free_pages(path)
    assert len(free) == db.execute("PRAGMA freelist_count").fetchone()[0] >= 20
    assert count_in_pages(path, [b"zq-freed-4711"], Pages(4096, free)) >= 20
    assert free_pages(tmp_path / "missing.sqlite") == frozenset()
    (tmp_path / "junk").write_bytes(b"not a database" * 100)
    assert free_pages(tmp_path / "junk") == frozenset()
    db.close()


def test_a_copy_outside_the_rows_is_found_by_the_sweep(
        tmp_path: Path, bank_rows: list[dict[str, Any]]) -> None:
    """Attack (an operator's script, or a bug, that copied a customer's value into a table
    the registry does not know): the proof's scan reads the vault only where her rows were,
    so it cannot see the copy; the sweep of every file whole that follows finds it, says
    where, and drops the values it searched; with ``erasure_scan = "full"`` the proof's own
    scan counts it."""
    node = in_process_node(tmp_path, _rows(bank_rows), "sweep-node", THRESHOLD)
    alice, bob = node.wallets[0], node.wallets[1]
    with node.vault.transaction() as conn:
        conn.execute("CREATE TABLE shadow_copy (note TEXT)")
        conn.execute("INSERT INTO shadow_copy VALUES (?)", (f"copied {MARKERS['job']}",))
        conn.execute("INSERT INTO shadow_copy VALUES (?)", (f"copied {bob.did}",))
    with node.vault.connection() as conn:  # long written: in the database file, not the WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    erasure = Erasure(node.home, node.vault)
    outcome = erasure.erase(protocol.issue_request(alice, node.home.identity.did),
                            caller=alice.did)
    assert protocol.scan_hits(outcome.proof) == 0  # the copy is not where her rows were
    assert erasure.sweep() == 1
    swept = erasure.outcome(alice.did).sweep
    assert swept is not None and swept["hits"] == 1
    assert swept["found_in"] == [{"path": "vault.sqlite", "location": "file.vault", "hits": 1}]
    with node.vault.connection() as conn:
        assert conn.execute("SELECT count(*) FROM erasures WHERE sweep_needles IS NOT NULL"
                            ).fetchone() == (0,)
    node.home.config.erasure_scan = "full"  # type: ignore[misc]
    full = erasure.erase(protocol.issue_request(bob, node.home.identity.did), caller=bob.did)
    assert protocol.scan_hits(full.proof) >= 1 and full.sweep is None
    assert full.proof["scan"]["vault"] == "whole file"


def test_the_service_sweeps_off_the_request(tmp_path: Path,
                                            bank_rows: list[dict[str, Any]]) -> None:
    """The Sweeper runs the sweep on its own thread once asked, and again when asked while
    it runs; ``wait`` returns once nothing is left to sweep."""
    from agent_node.erasure import Sweeper

    node = in_process_node(tmp_path, _rows(bank_rows), "sweeper-node", THRESHOLD)
    erasure = Erasure(node.home, node.vault)
    sweeper = Sweeper(node.home, node.vault)
    for wallet in node.wallets[:2]:
        outcome = erasure.erase(protocol.issue_request(wallet, node.home.identity.did),
                                caller=wallet.did)
        assert outcome.sweep == {"state": "pending"}
        sweeper.request()
    assert sweeper.wait(60)
    swept = [erasure.outcome(wallet.did).sweep for wallet in node.wallets[:2]]
    # No copy of either: the second customer's values that are part of values other
    # customers hold (found wherever theirs are) are told apart, not counted as copies.
    assert all(s is not None and s["hits"] == 0 and s["found_in"] == [] for s in swept)
    assert swept[1] is not None and swept[1]["inside_other_values"]["needles"] >= 1
    assert swept[1]["inside_other_values"]["hits"] >= 1  # counted apart, not hidden
    with node.vault.connection() as conn:
        assert conn.execute("SELECT count(*) FROM erasures WHERE sweep_needles IS NOT NULL"
                            ).fetchone() == (0,)


@pytest.mark.parametrize("threads", [False, True])
def test_the_scan_finds_every_value_in_one_pass_across_part_edges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: bool) -> None:
    """40 values searched at once in a file read in many parts, by the calling thread or on
    several threads (parts of 4 KiB here, so that values fall across part edges): each
    occurrence is counted once, exactly as one bytes.count per value counts them; a file
    without them counts zero."""
    import random

    from agent_node import erasure

    monkeypatch.setattr(erasure, "PART_BYTES", 4096)  # settings: small to make many edges,
    monkeypatch.setattr(erasure, "SERIAL_BYTES", 0 if threads else 1 << 30)  # and threads
    rng = random.Random(4711)
    needles = [f"zq-{i:02d}-{rng.randrange(10**9)}@example.org".encode() for i in range(40)]
    data = bytearray(rng.randbytes(200_000))
    for at in [4096 - 5, 8192 - 1, 8192 + 60, 12_000, 65_536 - 20, 199_950]:
        needle = rng.choice(needles)
        data[at:at + len(needle)] = needle
    path = tmp_path / "blob"
    path.write_bytes(bytes(data))
    expected = sum(bytes(data).count(n) for n in needles)
    assert expected == 6
    assert count_in_file(path, needles) == expected
    assert count_in_file(path, [n.upper() for n in needles]) == 0
    assert count_in_file(path, []) == 0


HOLDER = """
import sqlite3, sys
from pathlib import Path
from agent_node.erasure import free_pages, rewritten_pages, scan_home
home = Path(sys.argv[1])
db = sqlite3.connect(home / "v.sqlite", isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE t (x)")
db.execute("INSERT INTO t VALUES ('zq-held-4711')")
rewritten_pages(home / "v.sqlite")
free_pages(home / "v.sqlite")
print(sum(f["hits"] for f in scan_home(home, ["zq-held-4711"])["files"]), flush=True)
sys.stdin.readline()
db.execute("INSERT INTO t VALUES ('after')")
print(db.execute("SELECT count(*) FROM t").fetchone()[0], flush=True)
"""


def test_a_scan_keeps_sqlites_locks(tmp_path: Path) -> None:
    """Attack (found as a node dying of SIGBUS after an erasure): a scan that opened and
    closed the files SQLite holds released SQLite's POSIX locks with them, so another process
    could take the WAL index for unused and reset it under the node. After the scan, the
    rewritten-pages and the free-pages reads, the process's shared lock on the WAL index's
    "DMS" byte (offset 128, SQLite's os_unix.c) is still held, and its connection goes on."""
    import fcntl
    import subprocess
    import sys

    from tests.agent_node.conftest import env

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], env=env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "1"  # the value found, in the WAL
        fd = os.open(tmp_path / "v.sqlite-shm", os.O_RDWR)
        try:
            with pytest.raises(OSError):  # still held by the scanning process
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
        finally:
            os.close(fd)
        out, _ = holder.communicate("go\n", timeout=60)
    finally:
        holder.kill()
    assert holder.returncode == 0 and out.strip() == "2"


def test_a_file_this_process_writes_is_still_scanned(tmp_path: Path) -> None:
    """A file the process holds open for appending only (a log) cannot be read through that
    descriptor: the scan opens it for reading, and counts what it holds."""
    from agent_node.erasure import scan_home

    log_path = tmp_path / "node.log"
    with open(log_path, "a", encoding="utf-8") as log_file:  # write-only, kept open
        log_file.write("a line naming zq-logged-4711\n")
        log_file.flush()
        scan = scan_home(tmp_path, ["zq-logged-4711"])
    assert [f["hits"] for f in scan["files"] if f["path"] == "node.log"] == [1]
