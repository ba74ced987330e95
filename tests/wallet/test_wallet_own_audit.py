"""A customer's own audit from the command line, on real processes (node, ledger, sov-audit):
`consent-wallet receipts --out DIR` writes the grant and revocation receipts, `sov-audit
verify` accepts them, `consent-wallet audit-key` reveals the salt only after a confirmation,
and `sov-audit report --subject-did --salt` picks the customer's entries with it."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from consent.identity import Identity
from ledger.events import subject_commitment
from tests.wallet.conftest import LedgerProcess, NodeProcess
from tests.wallet.wallet_helpers import WalletCLI, assert_clean_error

BIN = Path(sys.executable).parent


def sov_audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "sov-audit"), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def _grant(wallet: WalletCLI, node: NodeProcess, requester: str) -> str:
    return str(json.loads(wallet.ok(
        "grant", "--node", node.address, "--node-ca", str(node.ca_path), "--requester",
        requester, "--purpose", "quote-generation", "--scope", "transaction", "--ttl", "24h",
        "--json").output)["grant_id"])


def test_receipts_and_audit_key_make_a_per_customer_report(
    initialised: WalletCLI, node: NodeProcess, ledger: LedgerProcess, tmp_path: Path
) -> None:
    wallet = initialised
    did = json.loads(wallet.ok("whoami", "--json").output)["did"]
    node.bind(did)
    ledger.register(node.did)  # the node endorses its customers' grant entries
    log_key = ledger.home / "log-public.json"
    wallet.ok("ledger", "set", ledger.address, "--ca", str(ledger.ca_path), "--log-key",
              str(log_key))
    first = _grant(wallet, node, Identity.generate().did)
    second = _grant(wallet, node, Identity.generate().did)
    wallet.ok("revoke", first)

    out = tmp_path / "my-receipts"
    written = json.loads(wallet.ok("receipts", "--out", str(out), "--json").output)
    names = sorted(Path(p).name for p in written["written"])
    bare = [g.removeprefix("urn:uuid:") for g in (first, second)]
    assert names == sorted([f"grant-{bare[0]}.json", f"grant-{bare[1]}.json",
                            f"revocation-{bare[0]}.json"])
    assert written["not_anchored"] == []
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in out.iterdir())
    files = sorted(str(p) for p in out.iterdir())
    verified = sov_audit("verify", "--log-key", str(log_key), *files)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # The salt only after a confirmation: a script without --yes is refused, nothing shown.
    refused = wallet("audit-key")
    assert_clean_error(refused, "only after you confirm", "--yes")
    assert "salt:" not in refused.output
    key = json.loads(wallet.ok("audit-key", "--yes", "--json").output)
    assert key["did"] == did and len(key["salt"]) == 64
    commitment = subject_commitment(did, bytes.fromhex(key["salt"]))
    assert key["subject_commitment"] == commitment
    entries = [json.loads(Path(f).read_text())["entry"] for f in files]
    assert {e["subject_commitment"] for e in entries} == {commitment}

    report = tmp_path / "me.html"
    made = sov_audit("report", "--log-key", str(log_key), "--subject-did", did, "--salt",
                     key["salt"], "-o", str(report), *files)
    assert made.returncode == 0, made.stdout + made.stderr
    html = report.read_text()
    assert "revocation" in html and "grant" in html
    # Another customer's salt selects none of these entries.
    other = sov_audit("report", "--log-key", str(log_key), "--subject-did", did, "--salt",
                      "ab" * 32, "-o", str(tmp_path / "none.html"), *files)
    assert other.returncode == 0
    assert (tmp_path / "none.html").read_text().count("revocation") < html.count("revocation")


def test_receipts_name_what_is_not_anchored_and_refuse_a_file(
    initialised: WalletCLI, node: NodeProcess, tmp_path: Path
) -> None:
    wallet = initialised
    node.bind(json.loads(wallet.ok("whoami", "--json").output)["did"])
    grant = _grant(wallet, node, Identity.generate().did)  # no ledger set: nothing anchored
    result = wallet.ok("receipts", "--out", str(tmp_path / "r"))
    assert "Wrote 0 receipt(s)" in result.output
    assert f"not yet in the ledger: grant {grant}" in result.output
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert_clean_error(wallet("receipts", "--out", str(blocker)), "is a file")
    assert blocker.read_text() == "x"


def test_audit_key_before_any_grant_says_why(initialised: WalletCLI) -> None:
    assert_clean_error(initialised("audit-key", "--yes"), "no commitment salt yet")
