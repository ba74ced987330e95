"""What ``sov-node sync`` tells the operator (issue 16): malformed source rows named by file,
line (or table row and row key), column and value, the value redacted for identity columns;
refused (nothing changes) or skipped and reported by the data map's ``on_bad_row``, never
silently altered; datasets gone from the data map reported, dropped with ``--drop-removed``;
a progress display on a terminal and none without one or under ``--json``.

Real ``sov-node`` processes over a real CSV source and vault.
"""

from __future__ import annotations

import json
import os
import pty
import select
import sqlite3
import subprocess
from pathlib import Path

import pytest

from agent_node.home import load_home
from agent_node.vault import Vault, table_name
from tests.agent_node.conftest import BIN, PASSPHRASE, env, run_cli

HEADER = "customer_id,order_id,amount,units,phone\n"
GOOD = [f"C{i:03d},{i},{i}.5,{i % 7},55501{i:02d}\n" for i in range(1, 9)]
DATASET = """
[sources.shop]
kind = "csv"
path = "orders.csv"

[datasets.orders]
source = "shop"
subject_key = ["customer_id"]
row_key = ["order_id"]
{policy}

[datasets.orders.columns]
amount = {{ type = "real", scope = "transaction" }}
units = {{ type = "integer", scope = "transaction" }}
phone = {{ type = "integer", scope = "identity" }}
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sync") / "node"
    run_cli("sov-node", "init", "--home", str(path))
    return path


def _setup(home: Path, rows: list[str], policy: str = "") -> None:
    (home / "orders.csv").write_text(HEADER + "".join(rows))
    (home / "datamap.toml").write_text(DATASET.format(policy=policy))


def _stored(home: Path) -> list[tuple[float, int]]:
    node = load_home(home, PASSPHRASE)
    with Vault(node.vault_path, node.keys).connection() as conn:
        try:
            return sorted(conn.execute(
                f'SELECT c_amount, c_units FROM "{table_name("orders")}"').fetchall())
        except sqlite3.OperationalError:
            return []


def _sync(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("sov-node", "sync", "--home", str(home), *args, check=False)


BAD = [
    "C101,101,12.5x,1,5550101\n",           # line 2 of the bad file: amount not a number
    "C102,102,3.0,3.7,5550102\n",           # units 3.7 is not an integer (never rounded)
    "C103,103,4.0,1,5550103,surplus\n",     # an extra field
    "C104,104,5.0\n",                        # a short row
    "C105,105,6.0,2,call-me-maybe\n",        # an identity column's bad value: redacted
    ",106,7.0,2,5550106\n",                 # no subject
]


def test_a_malformed_row_refuses_the_sync_by_default_and_changes_nothing(home: Path) -> None:
    _setup(home, GOOD)
    assert _sync(home).returncode == 0
    before = _stored(home)
    assert len(before) == len(GOOD)

    _setup(home, [BAD[0], *GOOD])
    refused = _sync(home)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "error: dataset 'orders', orders.csv line 2: column 'amount': '12.5x' is not of type "
        "real; nothing was synced: fix the source, or set on_bad_row = \"skip\" for this "
        "dataset in the data map to leave such rows out"]
    assert _stored(home) == before

    _setup(home, [*GOOD, BAD[2]])
    refused = _sync(home)
    assert refused.returncode == 1
    assert "orders.csv line 10: 6 fields where the header has 5" in refused.stderr
    assert _stored(home) == before


def test_skip_reports_every_bad_row_and_stores_only_good_ones(home: Path) -> None:
    _setup(home, [*GOOD, *BAD], policy='on_bad_row = "skip"')
    done = _sync(home)
    assert done.returncode == 0, done.stderr
    assert f"{len(BAD)} malformed row(s) left out" in done.stdout
    warnings = done.stderr.splitlines()
    assert warnings == [
        "warning: orders: left out orders.csv line 10: column 'amount': '12.5x' is not of "
        "type real",
        "warning: orders: left out orders.csv line 11: column 'units': '3.7' is not of type "
        "integer",
        "warning: orders: left out orders.csv line 12: 6 fields where the header has 5",
        "warning: orders: left out orders.csv line 13: 3 fields where the header has 5",
        "warning: orders: left out orders.csv line 14: column 'phone': (redacted: identity "
        "column) is not of type integer",
        "warning: orders: left out orders.csv line 15: the subject key (customer_id) is empty",
    ]
    assert "call-me-maybe" not in done.stderr + done.stdout
    stored = _stored(home)
    assert stored == sorted((i + 0.5, i % 7) for i in range(1, 9))  # nothing altered

    as_json = json.loads(_sync(home, "--json").stdout)
    assert as_json["datasets"][0]["skipped"] == len(BAD)
    assert as_json["datasets"][0]["problems"][0].startswith("orders.csv line 10")


def test_a_dataset_gone_from_the_data_map_is_reported_then_dropped(home: Path) -> None:
    _setup(home, GOOD)
    assert _sync(home).returncode == 0
    extra = DATASET.format(policy="").replace("datasets.orders", "datasets.refunds")
    extra = extra.split("[datasets.refunds]", 1)[1]
    (home / "datamap.toml").write_text(DATASET.format(policy="") + "[datasets.refunds]" + extra)
    assert _sync(home).returncode == 0
    (home / "datamap.toml").write_text(DATASET.format(policy=""))

    kept = _sync(home)
    assert kept.returncode == 0
    assert ("warning: dataset 'refunds' is no longer in the data map but its 8 row(s) stay in "
            "the vault (not answered); 'sov-node sync --drop-removed' deletes them"
            ) in kept.stderr
    assert json.loads(_sync(home, "--json").stdout)["removed_from_datamap"] == {"refunds": 8}

    dropped = _sync(home, "--drop-removed")
    assert "refunds: no longer in the data map; its 8 row(s) were deleted" in dropped.stdout
    node = load_home(home, PASSPHRASE)
    with Vault(node.vault_path, node.keys).connection() as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        names = {r[0] for r in conn.execute("SELECT name FROM datasets")}
    assert table_name("refunds") not in tables and names == {"orders"}
    assert "no longer in the data map" not in _sync(home).stderr


def _on_a_terminal(args: list[str]) -> str:
    """Run with stderr on a pseudo-terminal; what the terminal showed."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=secondary,
                            stdin=subprocess.DEVNULL, env={**env(), "COLUMNS": "100"})
    os.close(secondary)
    shown = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    proc.wait(timeout=60)
    os.close(primary)
    return shown.decode(errors="replace")


def test_progress_on_a_terminal_only(home: Path) -> None:
    rows = [f"C{i % 90:03d},{i},{i}.25,{i % 5},5550{i}\n" for i in range(2500)]
    _setup(home, rows)
    shown = _on_a_terminal([str(BIN / "sov-node"), "sync", "--home", str(home)])
    assert "sync orders" in shown and "2000" in shown, shown  # rows counted as they are read
    quiet = _sync(home)
    assert quiet.returncode == 0 and "sync orders" not in quiet.stderr
    under_json = _on_a_terminal([str(BIN / "sov-node"), "sync", "--home", str(home), "--json"])
    assert "sync orders" not in under_json


def test_bind_warns_on_a_customer_id_in_no_source(home: Path) -> None:
    _setup(home, GOOD)
    assert _sync(home).returncode == 0
    did = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    known = run_cli("sov-node", "subjects", "bind", "--home", str(home), "C001", did, "--json")
    assert json.loads(known.stdout)["in_datasets"] == ["orders"] and known.stderr == ""
    typo = run_cli("sov-node", "subjects", "bind", "--home", str(home), "C0O1", did)
    assert typo.returncode == 0 and "bound subject" in typo.stdout
    assert typo.stderr.startswith("warning: no synced dataset has a row of this customer id")
    assert "C0O1" not in typo.stderr  # the id is customer data
