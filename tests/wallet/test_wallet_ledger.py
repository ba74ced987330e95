"""The wallet, the agent node and the hash ledger together, as real processes over TLS gRPC.

The customer pins the ledger's log key, grants; the CRM asks; the node anchors its access-log
head (on demand with `sov-node log push`); the wallet's access log then shows the event
verified against the node's chain AND against the ledger (receipt signature and inclusion
checked with the pinned key). Events after the last anchored head show as "not yet anchored";
a receipt the node tampered with shows as a failed ledger verification; revocations are
anchored too; `sov-audit verify` accepts the receipts the node kept.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import tomli_w

from agent_node.requester import Requester
from consent.identity import Identity
from ledger.client import LedgerClient
from ledger.events import subject_commitment
from ledger.models import LogPublicKey
from tests.wallet.conftest import NODE_PASSPHRASE, LedgerProcess, NodeProcess
from tests.wallet.wallet_helpers import PASSPHRASE, WalletCLI, assert_clean_error
from wallet.service import Wallet

QUERY = {"dataset": "orders", "purpose": "quote-generation", "measures": ["count"],
         "group_by": []}
BIN = Path(sys.executable).parent


def configure_ledger(node: NodeProcess, ledger: LedgerProcess, push_seconds: float) -> None:
    """Point the node at the ledger in node.toml (the operator's way) and restart it."""
    node.stop()
    path = node.home / "node.toml"
    config = tomllib.loads(path.read_text())
    config["node"].update(ledger_address=ledger.address, ledger_ca=str(ledger.ca_path),
                          ledger_log_key=str(ledger.home / "log-public.json"),
                          ledger_push_seconds=push_seconds)
    path.write_text(tomli_w.dumps(config))
    node.start()
    ledger.register(node.did)  # its access heads and its customers' grants may be written


def sov(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"SOV_NODE_PASSPHRASE": NODE_PASSPHRASE, "PATH": str(BIN)}
    return subprocess.run([str(BIN / tool), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def access_log(wallet: WalletCLI) -> list[dict[str, object]]:
    return json.loads(wallet.ok("access-log", "--json").output)["events"]  # type: ignore[no-any-return]


def test_access_verified_against_ledger(
    initialised: WalletCLI, node: NodeProcess, ledger: LedgerProcess, tmp_path: Path
) -> None:
    wallet = initialised
    did = json.loads(wallet.ok("whoami", "--json").output)["did"]
    node.bind(did)
    configure_ledger(node, ledger, push_seconds=3600)  # pushes only on demand in this test
    crm = Identity.generate()
    log_key_file = ledger.home / "log-public.json"

    # Pin the ledger's key, checked against the file got out of band; the fingerprint shown is
    # the one anyone computes from that file.
    pinned = json.loads(wallet.ok("ledger", "set", ledger.address, "--ca", str(ledger.ca_path),
                                  "--log-key", str(log_key_file), "--json").output)
    printed = json.loads(wallet.ok("ledger", "fingerprint", str(log_key_file), "--json").output)
    assert pinned["fingerprint"] == printed["fingerprint"]
    assert pinned["fingerprint"].startswith("SHA256:")
    assert "key fingerprint: SHA256:" in wallet.ok("ledger", "show").output

    granted = json.loads(wallet.ok(
        "grant", "--node", node.address, "--node-ca", str(node.ca_path), "--requester", crm.did,
        "--purpose", "quote-generation", "--scope", "transaction", "--ttl", "24h",
        "--json").output)
    assert granted["delivered"] is True and granted["ledger_anchored"] is True
    grant_id = granted["grant_id"]

    Requester(crm).ask(node.address, node.ca_pem, {**QUERY, "grant_ids": [grant_id]})
    [event] = access_log(wallet)
    assert event["verified"] is True
    assert event["ledger_verified"] is None and event["ledger_status"] == "not-anchored"
    assert "not yet anchored" in wallet.ok("access-log").output

    pushed = sov("sov-node", "log", "push", "--home", str(node.home))
    assert pushed.returncode == 0, pushed.stderr
    assert "anchored 1 head(s), up to sequence 1" in pushed.stdout
    [event] = access_log(wallet)
    assert event["verified"] is True and event["ledger_verified"] is True
    assert event["ledger_status"] == "verified" and "ledger index 1" in event["ledger_detail"]
    assert "[verified, in the ledger]" in wallet.ok("access-log").output
    again = sov("sov-node", "log", "push", "--home", str(node.home))
    assert "nothing to anchor" in again.stdout

    # The head names the subject by its salted commitment (the salt came with the grant) and
    # the grant by its digest; never the DID.
    out = tmp_path / "receipts"
    kept = sov("sov-node", "log", "receipts", "--home", str(node.home), "--out", str(out))
    assert kept.returncode == 0 and "wrote 1 receipt(s)" in kept.stdout
    receipt = json.loads((out / "receipt-1.json").read_text())
    with Wallet.open(wallet.home, PASSPHRASE) as opened:
        salt = bytes.fromhex(opened.store.get_setting("subject_salt") or "")
        digest = opened.store.grant(grant_id).digest  # type: ignore[union-attr]
    entry = receipt["entry"]
    assert entry["type"] == "access_head" and entry["node"] == node.did
    assert entry["subject_commitments"] == [subject_commitment(did, salt)]
    assert entry["grant_digests"] == [digest]
    assert did not in json.dumps(receipt)
    audit = sov("sov-audit", "verify", "--log-key", str(log_key_file), str(out / "receipt-1.json"))
    assert audit.returncode == 0, audit.stdout
    assert "OK: all" in audit.stdout

    # Revoking anchors the signed revocation's digest too, and keeps the verified receipt.
    revoked = json.loads(wallet.ok("revoke", grant_id, "--json").output)
    assert "anchored in the ledger" in revoked["message"]
    with Wallet.open(wallet.home, PASSPHRASE) as opened:
        revocation = opened.store.revocation(grant_id)
    assert revocation is not None and revocation.ledger_receipt is not None
    assert revocation.ledger_receipt["entry"]["type"] == "revocation"
    assert revocation.ledger_receipt["entry"]["grant_digest"] == digest
    key = LogPublicKey.load(log_key_file)
    with LedgerClient(ledger.address, ledger.ca_path.read_bytes(), log_key=key) as client:
        assert client.receipt(revocation.ledger_receipt["entry_hash"]).event["type"] \
            == "revocation"

    # The refused question after the revocation is a new event, after the anchored head.
    refused = Requester(crm)
    assert_refused(refused, node, grant_id)
    first, second = access_log(wallet)
    assert first["ledger_status"] == "verified"
    assert second["verified"] is True and second["ledger_status"] == "not-anchored"


def assert_refused(requester: Requester, node: NodeProcess, grant_id: str) -> None:
    from agent_node.client import NodeError

    try:
        requester.ask(node.address, node.ca_pem, {**QUERY, "grant_ids": [grant_id]})
    except NodeError as exc:
        assert "revoked" in str(exc)
    else:
        raise AssertionError("a revoked grant was honoured")


def test_tampered_receipt_fails_ledger_verification(
    initialised: WalletCLI, node: NodeProcess, ledger: LedgerProcess
) -> None:
    wallet = initialised
    node.bind(json.loads(wallet.ok("whoami", "--json").output)["did"])
    configure_ledger(node, ledger, push_seconds=3600)
    crm = Identity.generate()
    wallet.ok("ledger", "set", ledger.address, "--ca", str(ledger.ca_path))
    grant_id = json.loads(wallet.ok(
        "grant", "--node", node.address, "--node-ca", str(node.ca_path), "--requester", crm.did,
        "--purpose", "quote-generation", "--scope", "transaction", "--ttl", "1h",
        "--json").output)["grant_id"]
    Requester(crm).ask(node.address, node.ca_pem, {**QUERY, "grant_ids": [grant_id]})
    assert sov("sov-node", "log", "push", "--home", str(node.home)).returncode == 0
    assert access_log(wallet)[0]["ledger_verified"] is True

    # The node now lies: it hands out a receipt whose entry differs from what the ledger holds.
    with sqlite3.connect(node.home / "vault.sqlite") as db:
        [(raw,)] = db.execute("SELECT receipt FROM ledger_heads").fetchall()
        receipt = json.loads(raw)
        receipt["entry"]["time"] = "2001-01-01T00:00:00Z"
        del receipt["entry_hash"]
        db.execute("UPDATE ledger_heads SET receipt = ?", (json.dumps(receipt),))
    [event] = access_log(wallet)
    assert event["verified"] is True  # the node's own chain still checks out ...
    assert event["ledger_verified"] is False and event["ledger_status"] == "failed"
    assert "inclusion" in event["ledger_detail"]  # ... but the ledger does not hold that entry
    assert "LEDGER VERIFICATION FAILED" in wallet.ok("access-log").output


def test_ledger_set_refuses_another_key(
    initialised: WalletCLI, ledger: LedgerProcess, tmp_path: Path
) -> None:
    other = LedgerProcess(tmp_path / "other")
    try:
        result = initialised("ledger", "set", ledger.address, "--ca", str(ledger.ca_path),
                             "--log-key", str(other.home / "log-public.json"))
    finally:
        other.stop()
    assert_clean_error(result, "different log key", "nothing was changed")
    assert_clean_error(initialised("ledger", "show"), "no ledger is set")
