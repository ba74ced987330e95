"""Backups (issue 13): a backup seals every customer under a key only the live keyring holds;
backup -> erase -> restore never brings the erased customer back (the restore drops them and
says so, the erasure list survives, no byte of the home, backup included, holds a marker, and
even the backup decrypted by hand with the node's master key shows none of them); a tampered,
truncated or foreign backup is refused in one sentence with nothing changed."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent_node import backup, locations
from agent_node.erasure import LIST_FILE, Erasure, count_in_file
from agent_node.home import hold_exclusive
from agent_node.vault import sync
from ledger import erasure as protocol
from tests.agent_node.conftest import (
    THRESHOLD,
    InProcessNode,
    in_process_node,
    run_cli,
    serve,
    stop,
)
from tests.agent_node.test_erasure import MARKERS, _hits, _needles, _rows, _use


def _counts(node: InProcessNode) -> dict[str, int]:
    with node.vault.connection() as conn:
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                for t in locations.vault_tables(conn)}


def _decrypted(node: InProcessNode, path: Path, tmp: Path) -> Path:
    """The backup opened by hand with the node's master key (what an insider could do)."""
    plain = tmp / "opened.sqlite"
    backup._decrypt(node.home, path, plain, None)
    return plain


def test_backup_erase_restore_never_brings_the_customer_back(
        tmp_path: Path, bank_rows: list[dict[str, Any]]) -> None:
    node = in_process_node(tmp_path, _rows(bank_rows), "backup-node", THRESHOLD)
    _use(node)
    alice, bob = node.wallets[0], node.wallets[1]
    saved = node.home.path / backup.BACKUPS_DIR / "before.sfbk"
    saved.parent.mkdir()
    info = backup.backup(node.home, saved)
    assert info.customers == 50 and info.wallets == 50
    assert locations.unregistered_files(node.home.path) == []
    before = _counts(node)
    # Even opened with the master key, the backup holds no customer value or DID in clear.
    opened = _decrypted(node, saved, tmp_path)
    everyone = [w.did.encode() for w in node.wallets] + [m.encode() for m in MARKERS.values()]
    assert count_in_file(opened, everyone) == 0

    request = protocol.issue_request(alice, node.home.identity.did)
    proof = Erasure(node.home, node.vault).erase(request, caller=alice.did).proof
    assert {"name": "file.keyring", "treatment": "destroy-key", "rows": 2, "kept": 0} \
        .items() <= next(loc for loc in proof["locations"] if loc["name"] == "file.keyring").items()
    assert _hits(node.home.path, _needles(node)) == {}  # the backup file included

    shown: list[tuple[str, int | None]] = []
    report = backup.restore(node.home, saved,
                            progress=lambda label, _done, total: shown.append((label, total)))
    # The progress total is the backup file's size (it once was a part's 4-byte length).
    assert shown and set(shown) == {("decrypting the backup", saved.stat().st_size)}
    assert (report.erased_subjects, report.erased_wallets) == (1, 1)
    assert (report.customers, report.wallets, report.keyless) == (49, 49, 0)
    after = _counts(node)
    with node.vault.connection() as conn:
        assert conn.execute("SELECT count(*) FROM bindings WHERE did = ?",
                            (alice.did,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM grants WHERE subject = ?",
                            (alice.did,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM grants WHERE subject = ?",
                            (bob.did,)).fetchone()[0] == 1
        bob_sids = node.vault.sids_for_did(conn, bob.did)
        assert len(bob_sids) == 1
        assert node.vault.data_key(conn, bob_sids[0])  # bob's key unwraps again
    assert after["ds_contacts"] == before["ds_contacts"] - 6
    assert after["grants"] == before["grants"] - 1 and after["bindings"] == before["bindings"] - 1
    # The erasure list survived, the mirror file too, and the same request gets the same proof.
    assert report.erasure_list == 1
    assert len(json.loads((node.home.path / LIST_FILE).read_text())) == 1
    assert Erasure(node.home, node.vault).erase(request).proof == proof
    # A sync from the source (which still has her) does not bring her back either.
    assert sync(node.vault, node.home.datamap())[0].inserted == 0
    assert _hits(node.home.path, _needles(node)) == {}
    # Her sealed groups are still in the old backup, but no key opens them any more.
    with sqlite3.connect(opened) as db:
        owners = {o for (o,) in db.execute("SELECT DISTINCT owner FROM backup_sealed")}
    keyring = backup.Keyring(node.home.path, node.home.keys)
    assert len(keyring.ciphers(owners, create=False)) == len(owners) - 2


def test_tampered_truncated_foreign_backups_are_refused_and_change_nothing(
        tmp_path: Path, bank_rows: list[dict[str, Any]]) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    node = in_process_node(tmp_path / "a", bank_rows[:60], "backup-a", THRESHOLD)
    other = in_process_node(tmp_path / "b", bank_rows[:60], "backup-b", THRESHOLD)
    good = tmp_path / "good.sfbk"
    made = run_cli("sov-node", "backup", "--home", str(node.home.path), "--out", str(good),
                   "--json")
    assert json.loads(made.stdout)["customers"] == 50 and good.stat().st_mode & 0o777 == 0o600
    foreign = tmp_path / "foreign.sfbk"
    backup.backup(other.home, foreign)
    data = good.read_bytes()
    header_end = len(backup.MAGIC) + 4 + int.from_bytes(data[6:10], "big")
    flipped = bytearray(data)
    flipped[header_end + 100] ^= 1
    header = bytearray(data)
    header[data.index(b'"created":"') + 12] ^= 1  # the time, inside the header
    cases = {"flipped.sfbk": (bytes(flipped), "altered or damaged"),
             "truncated.sfbk": (data[:-200], "truncated"),
             "extended.sfbk": (data + data[header_end:header_end + 40], "after its last part"),
             "header.sfbk": (bytes(header), "altered or damaged"),
             "random.sfbk": (b"not a backup at all", "not a node backup")}
    with node.vault.transaction() as conn:
        conn.execute("DELETE FROM grants")  # a change after the backup: must survive refusals
    before = _counts(node)
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(backup.BackupError, match=words):
            backup.restore(node.home, tmp_path / name)
    assert _counts(node) == before
    assert not (node.home.path / backup.WORK_DIR).exists()
    # The CLI: one sentence, no traceback, nothing changed.
    result = run_cli("sov-node", "restore", "--home", str(node.home.path), str(foreign),
                     "--yes", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "made by another node" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _counts(node) == before
    # Not while 'sov-node serve' runs on the home (two workers), in one sentence naming it.
    served = serve(node.home.path, workers=2)
    try:
        busy = run_cli("sov-node", "restore", "--home", str(node.home.path), str(good), "--yes",
                       check=False)
    finally:
        stop(served)
    assert busy.returncode == 1 and len(busy.stderr.strip().splitlines()) == 1
    assert f"'sov-node serve' is running on this node home (pid {served.process.pid})" \
        in busy.stderr and "nothing was restored" in busy.stderr
    assert _counts(node) == before
    # Nor does a server start while a restore holds the home.
    held = hold_exclusive(node.home.path)
    assert isinstance(held, int)
    try:
        refused = run_cli("sov-node", "serve", "--home", str(node.home.path), "--listen",
                          "127.0.0.1:0", check=False)
    finally:
        os.close(held)
    assert refused.returncode == 1 and "a restore is running" in refused.stderr
    assert "Traceback" not in refused.stderr
    # The good one restores, through the CLI, once the server stopped.
    restored = run_cli("sov-node", "restore", "--home", str(node.home.path), str(good), "--yes",
                       "--json")
    assert json.loads(restored.stdout)["customers"] == 50
    assert _counts(node)["ds_contacts"] == 60


def test_every_table_holding_customer_data_is_sealed_in_backups() -> None:
    holding = {loc.name for loc in locations.locations() if loc.kind == "table"
               and loc.erasure in ("delete", "redact", "destroy-key")}
    assert holding == backup.SEALED_LOCATIONS


RESTORE_CRASH = """
import os, signal, sys
from agent_node import backup
from agent_node.home import load_home
home = load_home(sys.argv[1], {passphrase!r})
def die(*_):  # the activity database replaced, the vault not yet
    os.kill(os.getpid(), signal.SIGKILL)
backup._replace_vault = die
backup.restore(home, sys.argv[2])
"""


def test_a_restore_killed_between_its_two_files_is_refused_by_serve_until_repeated(
        tmp_path: Path, bank_rows: list[dict[str, Any]]) -> None:
    """kill -9 after the activity database was replaced and before the vault was: the two
    files are of different moments, so 'sov-node serve' refuses to start, in one sentence
    naming the backup, until the same restore is run again; then it serves."""
    import subprocess
    import sys

    from tests.agent_node.conftest import PASSPHRASE, env

    node = in_process_node(tmp_path, bank_rows[:60], "restore-crash", THRESHOLD)
    saved = tmp_path / "saved.sfbk"
    backup.backup(node.home, saved)
    with node.vault.transaction() as conn:
        conn.execute("DELETE FROM grants")  # a change after the backup
    crashed = subprocess.run([sys.executable, "-c", RESTORE_CRASH.format(passphrase=PASSPHRASE),
                              str(node.home.path), str(saved)], env=env(), timeout=120,
                             capture_output=True, text=True)
    assert crashed.returncode == -9, crashed.stderr
    assert backup.interrupted_restore(node.home.path) == str(saved.absolute())
    refused = run_cli("sov-node", "serve", "--home", str(node.home.path), "--listen",
                      "127.0.0.1:0", check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"a restore from {saved.absolute()} stopped half-way" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    run_cli("sov-node", "restore", "--home", str(node.home.path), str(saved), "--yes")
    assert backup.interrupted_restore(node.home.path) is None
    assert locations.unregistered_files(node.home.path) == []
    served = serve(node.home.path)
    stop(served)
