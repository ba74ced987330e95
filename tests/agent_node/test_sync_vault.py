"""``sov-node sync`` is incremental (issue 3, Deliver 2) and the vault keeps identity and
sentiment columns encrypted with ``PRAGMA secure_delete=ON`` (Deliver 3), run through the
real CLI over a real SQLite source."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from agent_node.home import load_home
from agent_node.vault import Vault
from tests.agent_node.conftest import PASSPHRASE, make_home, run_cli, write_sqlite


def _sync(home: Path) -> str:
    return run_cli("sov-node", "sync", "--home", str(home)).stdout.strip()


def _vault_rows(home: Path) -> int:
    node = load_home(home, PASSPHRASE)
    with Vault(node.vault_path, node.keys).connection() as conn:
        return int(conn.execute("SELECT count(*) FROM ds_contacts").fetchone()[0])


def _vault_rows_or_none(home: Path) -> int | None:
    node = load_home(home, PASSPHRASE)
    with Vault(node.vault_path, node.keys).connection() as conn:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'ds_contacts'").fetchone()
        if exists is None:
            return None
        return int(conn.execute("SELECT count(*) FROM ds_contacts").fetchone()[0])


def test_sync_adds_once_updates_changes_and_removes_deletions(
        tmp_path: Path, bank_rows: list[dict[str, Any]]) -> None:
    source = tmp_path / "crm.db"
    write_sqlite(source, bank_rows)
    home = make_home(tmp_path, f'[sources.crm]\nkind = "sqlite"\npath = "{source}"\n')
    n = len(bank_rows)

    assert _sync(home) == f"contacts: {n} added, 0 updated, 0 removed, 0 unchanged"
    assert _sync(home) == f"contacts: 0 added, 0 updated, 0 removed, {n} unchanged"
    assert _vault_rows(home) == n

    conn = sqlite3.connect(source)
    conn.execute("UPDATE contacts SET duration = duration + 1 WHERE contact_id IN (0, 1)")
    conn.execute("DELETE FROM contacts WHERE contact_id IN (2, 3, 4)")
    conn.execute("INSERT INTO contacts VALUES ('C000', 100000, 40, 'admin.', 10, "
                 "'basic.4y', 'no')")
    conn.commit()
    conn.close()

    assert _sync(home) == f"contacts: 1 added, 2 updated, 3 removed, {n - 5} unchanged"
    assert _vault_rows(home) == n - 3 + 1
    assert _sync(home) == f"contacts: 0 added, 0 updated, 0 removed, {n - 2} unchanged"


def test_vault_holds_no_plaintext_identity_or_sentiment_and_deletes_securely(
        tmp_path: Path) -> None:
    # Values that cannot occur by chance in ciphertext or in the vault's own schema.
    marker_identity, marker_sentiment = "QAIDENTITYMARKER-7731", "QASENTIMENTMARKER-9124"
    rows = [{"customer_id": f"C{i:03d}", "contact_id": i, "age": 30 + i, "job": "admin.",
             "duration": 100 + i, "education": marker_identity, "y": marker_sentiment}
            for i in range(6)]
    source = tmp_path / "crm.db"
    write_sqlite(source, rows)
    home = make_home(tmp_path, f'[sources.crm]\nkind = "sqlite"\npath = "{source}"\n')
    _sync(home)

    node = load_home(home, PASSPHRASE)
    vault = Vault(node.vault_path, node.keys)
    with vault.connection() as conn:
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    stored = b"".join(p.read_bytes() for p in node.vault_path.parent.glob(
        node.vault_path.name + "*"))
    assert marker_identity.encode() not in stored
    assert marker_sentiment.encode() not in stored
    assert b"C000" not in stored  # subjects are opaque references, not source keys


def test_a_misspelt_sqlite_column_is_refused_not_copied_as_text(
        tmp_path: Path, bank_rows: list[dict[str, Any]]) -> None:
    # SQLite would read "jobb" (no such column) as the string 'jobb' for every row.
    source = tmp_path / "crm.db"
    write_sqlite(source, bank_rows[:20])
    home = make_home(tmp_path, f'[sources.crm]\nkind = "sqlite"\npath = "{source}"\n')
    datamap = home / "datamap.toml"
    datamap.write_text(datamap.read_text().replace(
        'job = { type = "text", scope = "transaction", index = true, groups_per_subject = 3 }',
        'job = { type = "text", scope = "transaction", source_column = "jobb" }'))
    result = run_cli("sov-node", "sync", "--home", str(home), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "has no column 'jobb'" in result.stderr
    assert _vault_rows_or_none(home) is None  # nothing synced
