"""Erasure from the wallet on real processes (issue 13): `consent-wallet erase` sends the
signed request, the node erases and anchors its signed proof in the ledger, `consent-wallet
receipts` writes the erasure receipt and `sov-audit verify` accepts it; a receipt whose
proof was changed fails; erasing again returns the same proof; a wallet the node does not
hold is told so in one sentence."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from consent.identity import Identity
from tests.wallet.conftest import LedgerProcess, NodeProcess
from tests.wallet.test_wallet_ledger import configure_ledger
from tests.wallet.wallet_helpers import WalletCLI, assert_clean_error

BIN = Path(sys.executable).parent


def sov_audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "sov-audit"), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_erase_from_the_wallet_is_proved_and_anchored(
    initialised: WalletCLI, node: NodeProcess, ledger: LedgerProcess, tmp_path: Path
) -> None:
    wallet = initialised
    did = json.loads(wallet.ok("whoami", "--json").output)["did"]
    node.bind(did)
    configure_ledger(node, ledger, push_seconds=3600)
    wallet.ok("grant", "--node", node.address, "--node-ca", str(node.ca_path), "--requester",
              Identity.generate().did, "--purpose", "quote-generation", "--scope",
              "transaction", "--ttl", "24h")

    receipt = json.loads(wallet.ok("erase", "--node", node.address, "--yes", "--json").output)
    proof = receipt["proof"]
    assert proof["customer"] == did and proof["node"] == node.did
    assert receipt["ledger"] == "anchored"
    rows = {loc["name"]: loc["rows"] for loc in proof["locations"]}
    assert rows["vault.dataset_rows"] == 3 and rows["vault.grants"] == 1
    with sqlite3.connect(node.home / "vault.sqlite") as db:
        assert db.execute("SELECT count(*) FROM bindings").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM grants").fetchone()[0] == 0

    assert receipt["sweep"] == {"state": "pending"}  # the node sweeps its home next
    again = json.loads(wallet.ok("erase", "--node", node.address, "--yes", "--json").output)
    assert again["proof"] == proof
    for _ in range(100):  # asked again, the node returns the same proof and its sweep's record
        if again["sweep"].get("state") != "pending":
            break
        time.sleep(0.1)
        again = json.loads(wallet.ok("erase", "--node", node.address, "--yes", "--json").output)
    assert again["proof"] == proof and again["sweep"]["bytes"] > 0
    # Found only in the company's source file this test keeps in the node home (the node
    # reads it, never owns it: README, what no proof can).
    assert {f["path"] for f in again["sweep"]["found_in"]} <= {"sales.db"}

    out = tmp_path / "receipts"
    wallet.ok("receipts", "--out", str(out))
    erasures = sorted(out.glob("erasure-*.json"))
    assert len(erasures) == 1
    log_key = str(ledger.home / "log-public.json")
    verified = sov_audit("verify", "--log-key", log_key, str(erasures[0]))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "erasure proof signed by" in verified.stdout
    assert "the erasure entry of exactly this proof" in verified.stdout

    # A proof changed in any way fails (here: fewer rows claimed).
    forged = json.loads(erasures[0].read_text())
    forged["proof"]["locations"][0]["rows"] += 1
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(forged))
    failed = sov_audit("verify", "--log-key", log_key, str(changed))
    assert failed.returncode == 1 and "FAIL erasure" in failed.stdout


def test_erase_at_a_node_that_holds_nothing_is_one_sentence(
    initialised: WalletCLI, node: NodeProcess
) -> None:
    wallet = initialised
    wallet.ok("nodes", "add", node.address, "--ca", str(node.ca_path))
    result = wallet("erase", "--node", node.address, "--yes")
    assert_clean_error(result, "holds nothing about that customer")


def test_a_nodes_sweep_record_reaches_the_terminal_only_as_a_count(
        initialised: WalletCLI, monkeypatch: Any) -> None:
    """Attack (a node writing what it likes in the unsigned sweep record, such as terminal
    escape sequences): `consent-wallet erase` prints only a count of it, or nothing."""
    from wallet import service

    proof = {"node": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
             "locations": [{"rows": 1}], "destroyed_keys": [],
             "scan": {"files": [], "needles": 1}}
    for sweep, shown in (({"hits": 2, "swept_at": "\x1b]0;owned\x07"}, "sweep of its whole "
                          "home: 2 hit(s)"), ({"hits": "\x1b[2J9"}, None), ("\x1b[2J", None)):
        receipt = {"proof": proof, "ledger": "no ledger configured", "sweep": sweep}
        monkeypatch.setattr(service.Wallet, "erase_routed",
                            lambda self, node, node_ca=None, r=receipt: (r, None))
        out = initialised.ok("erase", "--node", "127.0.0.1:9", "--yes").output
        assert "\x1b" not in out
        assert (shown in out) if shown else "sweep of its whole home" not in out
