"""Migration between two real node processes (issue 13): `consent-wallet migrate` moves a
customer from node A to node B (A's signed export, B's signed import receipt, A's erasure
proof anchored in the ledger), `sov-audit verify` accepts the migration receipt and fails a
changed one, B's `sov-node sync` keeps the imported rows; a node that refuses the import leaves
everything at A; a wallet killed with SIGKILL mid-migrate finishes it with `--resume`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from consent.identity import Identity
from tests.wallet.conftest import DATAMAP, LedgerProcess, NodeProcess, _sov_node
from tests.wallet.test_wallet_erasure import sov_audit
from tests.wallet.test_wallet_ledger import configure_ledger
from tests.wallet.wallet_helpers import PASSPHRASE, WalletCLI, assert_clean_error


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    a = NodeProcess(tmp_path / "a", name="node-a")
    b = NodeProcess(tmp_path / "b", name="node-b")
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


def _count(node: NodeProcess, sql: str, *args: object) -> int:
    with sqlite3.connect(node.home / "vault.sqlite") as db:
        return int(db.execute(sql, args).fetchone()[0])


def _customer_rows(node: NodeProcess, did: str) -> int:
    return _count(node, "SELECT count(*) FROM ds_orders WHERE sid IN (SELECT sid FROM bindings "
                  "WHERE did = ?)", did)


# The wallet holder's values at A (the source's emails of their 3 orders): never at rest in
# clear in the wallet home, during a migration or after it.
MARKERS = [f"c{i}@example.com".encode() for i in range(3)]


def _in_wallet_home(wallet: WalletCLI) -> dict[str, int]:
    """Marker occurrences per file of the wallet home, raw bytes (WAL included)."""
    found = {}
    for path in sorted(p for p in wallet.home.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if hits := sum(data.count(m) for m in MARKERS):
            found[str(path.relative_to(wallet.home))] = hits
    return found


def _prepare(wallet: WalletCLI, a: NodeProcess, b: NodeProcess) -> str:
    did = json.loads(wallet.ok("whoami", "--json").output)["did"]
    a.bind(did)
    wallet.ok("nodes", "add", a.address, "--ca", str(a.ca_path))
    wallet.ok("nodes", "add", b.address, "--ca", str(b.ca_path))
    wallet.ok("grant", "--node", a.address, "--requester", Identity.generate().did,
              "--purpose", "quote-generation", "--scope", "transaction", "--ttl", "24h")
    return did


def test_migrate_moves_the_customer_with_three_verified_receipts(
    initialised: WalletCLI, nodes: tuple[NodeProcess, NodeProcess], ledger: LedgerProcess,
    tmp_path: Path,
) -> None:
    wallet, (a, b) = initialised, nodes
    configure_ledger(a, ledger, push_seconds=3600)
    did = _prepare(wallet, a, b)
    assert _customer_rows(a, did) == 3

    moved = json.loads(wallet.ok("migrate", "--from", a.address, "--to", b.address, "--yes",
                                 "--json").output)
    assert moved["state"] == "done" and not moved["resumed"]
    assert moved["import_receipt"]["datasets"] == {"orders": 3}
    assert moved["erasure"]["ledger"] == "anchored"
    assert _customer_rows(a, did) == 0 and _count(a, "SELECT count(*) FROM grants") == 0
    assert _customer_rows(b, did) == 3
    # The customer's data passed through the wallet and was never kept in clear there.
    assert _in_wallet_home(wallet) == {}
    # B's source never had these rows: its sync keeps them all the same.
    _sov_node("sync", "--home", str(b.home))
    assert _customer_rows(b, did) == 3 and _count(b, "SELECT count(*) FROM ds_orders") == 15

    out = tmp_path / "receipts"
    wallet.ok("receipts", "--out", str(out))
    [migration] = sorted(out.glob("migration-*.json"))
    log_key = str(ledger.home / "log-public.json")
    verified = sov_audit("verify", "--log-key", log_key, str(migration))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"migration of {did}: 3 row(s) exported by {a.did} (export kept as its digest)" \
        in verified.stdout
    assert _in_wallet_home(wallet) == {}
    assert not any(m in migration.read_bytes() for m in MARKERS)  # the receipt file neither
    assert "the erasure entry of exactly this proof" in verified.stdout
    # The officer's report and bundle take it too; the report shows what the proof says.
    report = tmp_path / "report.html"
    made = sov_audit("report", "--log-key", log_key, "-o", str(report), str(migration))
    assert made.returncode == 0, made.stdout + made.stderr
    html = report.read_text()
    assert f'erased <code class="did" title="{did}">' in html
    assert "hit(s) (signed proof checked)" in html  # sales.db, the source, is in its home
    assert "vault.dataset_rows 3" in html
    bundled = sov_audit("bundle", "--log-key", log_key, "-o", str(tmp_path / "b.json"),
                        str(migration))
    assert bundled.returncode == 0 and "1 receipt(s)" in bundled.stdout, bundled.stdout
    # Any changed part fails: the import claiming other rows, another export's digest.
    for path, change in (("import", lambda d: d["import"]["datasets"].update(orders=2)),
                         ("export", lambda d: d["export"].update(digest="0" * 64))):
        forged = json.loads(migration.read_text())
        change(forged)
        changed = tmp_path / f"changed-{path}.json"
        changed.write_text(json.dumps(forged))
        failed = sov_audit("verify", "--log-key", log_key, str(changed))
        assert failed.returncode == 1 and "FAIL migration" in failed.stdout, failed.stdout


def test_a_node_that_refuses_the_import_leaves_everything_at_a(
    initialised: WalletCLI, nodes: tuple[NodeProcess, NodeProcess],
) -> None:
    wallet, (a, b) = initialised, nodes
    b.stop()  # B maps its orders under another name: it cannot hold A's 'orders' rows
    (b.home / "datamap.toml").write_text(DATAMAP.replace("datasets.orders", "datasets.sales"))
    _sov_node("sync", "--home", str(b.home))
    b.start()
    did = _prepare(wallet, a, b)
    result = wallet("migrate", "--from", a.address, "--to", b.address, "--yes")
    assert_clean_error(result, "refused the import", "does not map dataset 'orders'",
                       f"your data stays at {a.address}", exit_code=1)
    assert len(result.output.strip().splitlines()) == 1
    assert _customer_rows(a, did) == 3 and _count(a, "SELECT count(*) FROM grants") == 1
    assert _count(b, "SELECT count(*) FROM bindings WHERE did = ?", did) == 0
    assert_clean_error(wallet("migrate", "--resume"), "no migration is unfinished")


CRASH = """
import os, signal, sys
from agent_node.client import NodeClient
from wallet.service import Wallet
real = NodeClient.import_customer
def import_customer(self, *args, **kwargs):
    if sys.argv[4] == "after-import":
        real(self, *args, **kwargs)  # B imported; the wallet never hears of it
    os.kill(os.getpid(), signal.SIGKILL)
NodeClient.import_customer = import_customer
with Wallet.open(sys.argv[1], {passphrase!r}) as wallet:
    wallet.migrate(sys.argv[2], sys.argv[3])
"""


@pytest.mark.parametrize("stage", ["after-export", "after-import"])
def test_kill_9_mid_migrate_is_finished_by_resume(
    initialised: WalletCLI, nodes: tuple[NodeProcess, NodeProcess], stage: str,
) -> None:
    wallet, (a, b) = initialised, nodes
    did = _prepare(wallet, a, b)
    crashed = subprocess.run([sys.executable, "-c", CRASH.format(passphrase=PASSPHRASE),
                              str(wallet.home), a.address, b.address, stage],
                             env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    # In flight, the wallet keeps A's export sealed under its own key, never in clear.
    assert _in_wallet_home(wallet) == {}
    assert _customer_rows(a, did) == 3  # nothing erased at A before B's import is confirmed
    assert _customer_rows(b, did) == (3 if stage == "after-import" else 0)
    # A new migration is not started over the unfinished one.
    assert_clean_error(wallet("migrate", "--from", b.address, "--to", a.address, "--yes"),
                       "is unfinished", "--resume")

    resumed = json.loads(wallet.ok("migrate", "--resume", "--json").output)
    assert resumed["state"] == "done" and resumed["resumed"]
    assert _customer_rows(a, did) == 0
    assert _customer_rows(b, did) == 3  # imported once: the repeated request got its receipt
    assert _count(b, "SELECT count(*) FROM imports") == 1
    assert_clean_error(wallet("migrate", "--resume"), "no migration is unfinished")


def test_kill_9_mid_migrate_then_a_refusal_rolls_back(
    initialised: WalletCLI, nodes: tuple[NodeProcess, NodeProcess],
) -> None:
    wallet, (a, b) = initialised, nodes
    did = _prepare(wallet, a, b)
    crashed = subprocess.run([sys.executable, "-c", CRASH.format(passphrase=PASSPHRASE),
                              str(wallet.home), a.address, b.address, "after-export"],
                             env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    b.stop()  # meanwhile B stops keeping orders: on resume it refuses the import
    (b.home / "datamap.toml").write_text(DATAMAP.replace("datasets.orders", "datasets.sales"))
    b.start()
    result = wallet("migrate", "--resume")
    assert_clean_error(result, "refused the import", f"your data stays at {a.address}",
                       exit_code=1)
    assert _customer_rows(a, did) == 3 and _count(a, "SELECT count(*) FROM grants") == 1
    assert _count(b, "SELECT count(*) FROM bindings WHERE did = ?", did) == 0
    assert_clean_error(wallet("migrate", "--resume"), "no migration is unfinished")
