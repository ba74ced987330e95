"""The activity database (agent_node.activity, issue 15): every table a query writes lives in
``activity.sqlite`` beside the vault, so a query's durable commit leaves the vault file alone
(its readers keep their page caches); a home from before it has those tables moved in once;
backups carry both files as of one moment; an erasure checkpoints and scans it too."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

from agent_node import accesslog, activity, backup, locations
from agent_node.erasure import Erasure
from agent_node.vault import Vault, activity_tables, ensure_activity_tables
from consent.grants import issue_grant
from consent.identity import Identity
from ledger import erasure as protocol
from tests.agent_node.conftest import THRESHOLD, InProcessNode, in_process_node

QUERY = {"dataset": "contacts", "purpose": "churn-analysis", "measures": ["count"]}


def _grant_all(node: InProcessNode, requester: Identity) -> None:
    for wallet in node.wallets:
        node.store.submit(issue_grant(
            wallet, requester=requester.did, nodes=[node.home.identity.did],
            purpose="churn-analysis", scopes=["transaction"], ttl=timedelta(hours=24),
            max_queries=50))


def _versions(conn: sqlite3.Connection) -> tuple[int, int]:
    """PRAGMA data_version of each file: it changes when another connection commits to it."""
    return (conn.execute("PRAGMA main.data_version").fetchone()[0],
            conn.execute("PRAGMA activity.data_version").fetchone()[0])


def _main_tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_a_query_commits_to_the_activity_file_only(tmp_path: Path,
                                                   bank_rows: list[dict[str, Any]]) -> None:
    node = in_process_node(tmp_path, bank_rows, "activity", THRESHOLD)
    requester = Identity.generate()
    _grant_all(node, requester)
    # Every table a query writes is in activity.sqlite, none in the vault file.
    assert not _main_tables(node.home.vault_path) & set(activity_tables())
    assert set(activity_tables()) <= _main_tables(node.home.path / activity.FILE)
    reader = sqlite3.connect(node.home.vault_path, isolation_level=None)
    reader.execute("ATTACH DATABASE ? AS activity", (str(node.home.path / activity.FILE),))
    before = _versions(reader)
    answered = node.engine.run(QUERY, requester.did)  # threshold: overlap control, counters
    after = _versions(reader)
    assert answered["groups"] and after[1] != before[1]  # the event, sets and debits
    assert after[0] == before[0]  # the vault file was not written: caches stay valid
    with node.vault.connection() as conn:
        assert accesslog.head(conn)["seq"] == answered["event_seq"]
        assert conn.execute("SELECT count(*) FROM released_sets").fetchone()[0] >= 1
        assert conn.execute("SELECT count(*) FROM grant_usage").fetchone()[0] == 50
    reader.close()


def _legacy_home(node: InProcessNode) -> None:
    """Turn the node home into one from before the activity database: its tables back in the
    vault file, no activity file."""
    vault_path, activity_path = node.home.vault_path, node.home.path / activity.FILE
    with sqlite3.connect(vault_path, isolation_level=None) as db:
        db.execute("ATTACH DATABASE ? AS old", (str(activity_path),))
        ensure_activity_tables(db, "main")
        tables = activity.tables_in(db, "old", activity_tables())
        db.execute("BEGIN")
        activity.copy(db, "old", "main", tables)
        db.execute("COMMIT")
        db.execute("DETACH DATABASE old")
    for suffix in ("", "-wal", "-shm"):
        Path(str(activity_path) + suffix).unlink(missing_ok=True)


def test_an_older_home_has_its_tables_moved_once(tmp_path: Path,
                                                 bank_rows: list[dict[str, Any]]) -> None:
    node = in_process_node(tmp_path, bank_rows, "legacy", THRESHOLD)
    requester = Identity.generate()
    _grant_all(node, requester)
    for _ in range(3):
        node.engine.run(QUERY, requester.did)
    with node.vault.connection() as conn:
        events = accesslog.operator_view(conn)
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in activity_tables()}
    _legacy_home(node)
    assert set(activity_tables()) <= _main_tables(node.home.vault_path)
    # A crash after the copy and before the vault's tables were dropped: an activity file
    # holding a copy already. The next open copies again (no duplicate) and drops them.
    with sqlite3.connect(node.home.path / activity.FILE, isolation_level=None) as db:
        db.execute("ATTACH DATABASE ? AS vault", (str(node.home.vault_path),))
        ensure_activity_tables(db, "main")
        db.execute("BEGIN")
        activity.copy(db, "vault", "main", activity.tables_in(db, "vault", activity_tables()))
        db.execute("COMMIT")
    vault = Vault(node.home.vault_path, node.home.keys)
    Vault(node.home.vault_path, node.home.keys)  # a second open finds nothing to move
    assert not _main_tables(node.home.vault_path) & set(activity_tables())
    with vault.connection() as conn:
        assert accesslog.operator_view(conn) == events  # chain and sets still check out
        assert all(e["chain_ok"] and e["sets_match"] for e in events)
        assert {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in activity_tables()} == counts


def test_backup_restore_carries_the_activity_file_and_erasure_scans_it(
        tmp_path: Path, bank_rows: list[dict[str, Any]]) -> None:
    node = in_process_node(tmp_path, bank_rows, "activity-backup", THRESHOLD)
    requester = Identity.generate()
    _grant_all(node, requester)
    node.engine.run(QUERY, requester.did)
    saved = tmp_path / "node.sfbk"
    backup.backup(node.home, saved)
    # The backup holds one database: the vault's tables and the activity tables together.
    opened = tmp_path / "opened.sqlite"
    backup._decrypt(node.home, saved, opened, None)
    assert set(activity_tables()) <= _main_tables(opened)
    node.engine.run(QUERY, requester.did)  # after the backup: lost by the restore
    with node.vault.connection() as conn:
        assert accesslog.head(conn)["seq"] == 2
        head = accesslog.operator_view(conn)[0]
    backup.restore(node.home, saved)
    assert not _main_tables(node.home.vault_path) & set(activity_tables())
    with node.vault.connection() as conn:
        assert accesslog.head(conn)["seq"] == 1
        assert accesslog.operator_view(conn)[0] == head
        assert conn.execute("SELECT queries_used FROM grant_usage LIMIT 1").fetchone() == (1,)

    alice = node.wallets[0]
    erasure = Erasure(node.home, node.vault)
    proof = erasure.erase(
        protocol.issue_request(alice, node.home.identity.did), caller=alice.did).proof
    scanned = {f["path"]: f for f in proof["scan"]["files"]}
    assert scanned[activity.FILE]["location"] == "file.activity"
    assert scanned[activity.FILE]["hits"] == 0
    # Checkpointed and truncated, as the vault's WAL; and again after the sweep that follows.
    wals = (node.home.path / (activity.FILE + "-wal"),
            node.home.path / (node.home.vault_path.name + "-wal"))
    assert all(not wal.exists() or wal.stat().st_size == 0 for wal in wals)
    assert erasure.sweep() == 1
    assert all(not wal.exists() or wal.stat().st_size == 0 for wal in wals)
    assert locations.unregistered_files(node.home.path) == []
    with node.vault.connection() as conn:
        assert locations.unregistered_tables(conn) == []


def _locked(path: Path) -> bool:
    """Whether another connection holds the write lock of the database at ``path``."""
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return True
    finally:
        probe.close()
    return False


def test_every_write_transaction_locks_both_files(tmp_path: Path,
                                                  bank_rows: list[dict[str, Any]]) -> None:
    """A revocation (a vault transaction) and a query's write phase (a group-commit job)
    exclude each other although each writes one file: each holds both write locks, so a
    write phase's consent check never misses a revocation committed meanwhile."""
    node = in_process_node(tmp_path, bank_rows[:60], "activity-locks", THRESHOLD)
    vault_file, activity_file = node.home.vault_path, node.home.path / activity.FILE
    with node.vault.transaction():
        assert _locked(vault_file) and _locked(activity_file)
    seen = node.vault.commit(lambda conn, batch: (_locked(vault_file), _locked(activity_file)))
    assert seen == (True, True)
    assert not _locked(vault_file) and not _locked(activity_file)
