"""Every wallet command end to end against a real agent node process over TLS gRPC.

The customer creates a wallet, the operator binds the wallet's DID to the customer's record,
the customer grants the CRM a purpose, the CRM asks, the customer sees the access (verified
against the node's hash chain), exports, revokes (confirmed by the node) and the CRM's next
question is refused; an unreachable node loses nothing and `sync` delivers later.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from agent_node import accesslog
from agent_node.client import NodeError
from agent_node.requester import Requester
from consent.grants import verify_revocation
from consent.identity import Identity
from tests.wallet.conftest import LedgerProcess, NodeProcess
from tests.wallet.wallet_helpers import PASSPHRASE, WalletCLI, assert_clean_error
from wallet.service import Wallet

QUERY = {"dataset": "orders", "purpose": "quote-generation", "measures": ["count", "sum:amount"],
         "group_by": []}


def _did(cli: WalletCLI) -> str:
    return json.loads(cli.ok("whoami", "--json").output)["did"]


def test_full_story(initialised: WalletCLI, node: NodeProcess, tmp_path: Path) -> None:
    wallet = initialised
    node.bind(_did(wallet))
    crm = Identity.generate()

    added = json.loads(wallet.ok("nodes", "add", node.address, "--ca", str(node.ca_path),
                                 "--json").output)
    assert added["did"] == node.did and added["name"] == "distributor-eu"
    assert added["region"] == "eu-west" and added["max_ttl_hours"] == 72

    # Node policy and grant inputs are checked before anything is signed.
    assert_clean_error(wallet("grant", "--node", node.address, "--requester", crm.did,
                              "--purpose", "quote-generation", "--scope", "transaction",
                              "--ttl", "80h"), "at most 72 hours")

    granted = json.loads(wallet.ok(
        "grant", "--node", node.address, "--requester", crm.did, "--purpose", "quote-generation",
        "--purpose-text", "spring order", "--scope", "transaction", "--ttl", "24h",
        "--max-queries", "5", "--json").output)
    grant_id = granted["grant_id"]
    assert granted["delivered"] is True and granted["delivery"] == "delivered"

    # The CRM asks under the grant: the node answers and logs the access.
    answer = Requester(crm).ask(node.address, node.ca_pem, {**QUERY, "grant_ids": [grant_id]})
    assert answer.dataset == "orders"

    listed = json.loads(wallet.ok("grants", "--json").output)
    assert len(listed) == 1
    view = listed[0]
    assert view["status"] == "active" and view["status_fresh"] is True
    assert view["queries_used"] == 1 and view["queries_left"] == 4
    assert view["node"]["name"] == "distributor-eu" and view["node"]["region"] == "eu-west"
    human = wallet.ok("grants").output
    assert "ACTIVE" in human and "4/5 queries left" in human and "distributor-eu" in human

    log = json.loads(wallet.ok("access-log", "--json").output)
    assert log["unreachable"] == {}
    [event] = log["events"]
    assert event["verified"] is True
    assert event["event"]["requester"] == crm.did
    assert event["event"]["purpose"] == "quote-generation"
    assert event["event"]["own_grants"] == [grant_id] and "grant_ids" not in event["event"]
    assert "[verified]" in wallet.ok("access-log", "--since", "1h").output
    later = json.loads(wallet.ok("access-log", "--since", "2999-01-01T00:00Z", "--json").output)
    assert later["events"] == []

    out = tmp_path / "export.json"
    wallet.ok("export", "--node", node.address, "--out", str(out))
    exported = json.loads(out.read_text())
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert exported["subject"] == _did(wallet)
    assert exported["data"]["node"] == node.did
    amounts = sorted(row["amount"] for row in exported["data"]["datasets"]["orders"])
    assert amounts == [100.0, 101.0, 102.0]  # exactly this customer's three orders
    assert [g["id"] for g in exported["data"]["grants"]] == [grant_id]
    # The export carries the events that used this customer's data, each with the proofs
    # that its grant and customer record are in the event's committed sets.
    [event] = exported["data"]["access_events"]
    proofs = exported["data"]["access_event_proofs"][str(event["seq"])]
    assert [p["member"] for p in proofs["grants"]] == [grant_id]
    assert all(accesslog.verify_membership(p, event["grant_count"], event["grants_root"])
               for p in proofs["grants"])
    assert [p["member"] for p in proofs["subjects"]] == exported["data"]["subject_refs"]
    assert all(accesslog.verify_membership(p, event["subject_count"], event["subjects_root"])
               for p in proofs["subjects"])

    revoked = json.loads(wallet.ok("revoke", grant_id, "--reason", "order placed",
                                   "--json").output)
    assert revoked["confirmed"] is True
    with Wallet.open(wallet.home, PASSPHRASE) as opened:
        revocation = opened.store.revocation(grant_id)
        assert revocation is not None and revocation.delivery == "delivered"
        assert verify_revocation(revocation.document).grant_id == grant_id
    with pytest.raises(NodeError):
        Requester(crm).ask(node.address, node.ca_pem, {**QUERY, "grant_ids": [grant_id]})
    listed = json.loads(wallet.ok("grants", "--json").output)
    assert listed[0]["status"] == "revoked"
    assert_clean_error(wallet("revoke", grant_id), "already revoked")
    assert_clean_error(wallet("revoke", "urn:uuid:11111111-1111-4111-8111-111111111111"),
                       "holds no grant")
    # The refused question is in the log too, still verified against the chain.
    log = json.loads(wallet.ok("access-log", "--json").output)
    assert [e["verified"] for e in log["events"]] == [True] * len(log["events"])
    assert len(log["events"]) == 2


def test_unreachable_node_loses_nothing(initialised: WalletCLI, node: NodeProcess) -> None:
    wallet = initialised
    node.bind(_did(wallet))
    crm = Identity.generate()
    wallet.ok("nodes", "add", node.address, "--ca", str(node.ca_path))
    node.stop()

    result = wallet("grant", "--node", node.address, "--requester", crm.did,
                    "--purpose", "renewal-warning", "--scope", "identity", "--ttl", "90m",
                    "--json")
    assert_clean_error(result, "cannot be reached", "consent-wallet sync", exit_code=3)
    # The client's "nothing was changed" would be false here: the signed grant was saved.
    assert "nothing was changed" not in result.output
    pending = json.loads(result.stdout)
    grant_id = pending["grant_id"]
    assert pending["delivered"] is False
    assert_clean_error(wallet("sync"), "still pending", exit_code=3)
    offline = json.loads(wallet.ok("grants", "--json").output)
    assert [(g["id"], g["status"]) for g in offline] == [(grant_id, "pending-delivery")]
    log = wallet.ok("access-log", "--json")
    assert json.loads(log.output)["events"] == []

    node.start()
    synced = json.loads(wallet.ok("sync", "--json").output)
    assert synced["delivered_grants"] == [grant_id] and synced["failed"] == {}
    listed = json.loads(wallet.ok("grants", "--json").output)
    assert listed[0]["status"] == "active" and listed[0]["status_fresh"] is True
    assert wallet.ok("grant", "--retry", grant_id, "--json").exit_code == 0

    # A revocation while the node is down is saved, said to be NOT in effect, then synced.
    node.stop()
    assert_clean_error(wallet("revoke", grant_id), "NOT yet in effect", "consent-wallet sync")
    # Until the node applies it the grant still works there: never shown as plainly revoked.
    cached = json.loads(wallet.ok("grants", "--json").output)
    assert cached[0]["status"] == "revocation-pending" and cached[0]["status_fresh"] is False
    assert "NOT yet in effect" in wallet.ok("grants", "--offline").output
    assert_clean_error(wallet("revoke", grant_id), "not yet delivered", "consent-wallet sync")
    node.start()
    synced = json.loads(wallet.ok("sync", "--json").output)
    assert synced["delivered_revocations"] == [grant_id]
    fresh = json.loads(wallet.ok("grants", "--json").output)
    assert fresh[0]["status"] == "revoked" and fresh[0]["status_fresh"] is True


def test_grant_hash_is_anchored_in_the_ledger(
    initialised: WalletCLI, node: NodeProcess, ledger: LedgerProcess
) -> None:
    wallet = initialised
    did = _did(wallet)
    node.bind(did)
    ledger.register(node.did)  # the node endorses its customers' grant entries
    wallet.ok("ledger", "set", ledger.address, "--ca", str(ledger.ca_path))
    granted = json.loads(wallet.ok(
        "grant", "--node", node.address, "--node-ca", str(node.ca_path), "--requester",
        Identity.generate().did, "--purpose", "churn-analysis", "--scope", "sentiment",
        "--ttl", "2h", "--json").output)
    assert granted["delivered"] is True and granted["ledger_anchored"] is True
    with Wallet.open(wallet.home, PASSPHRASE) as opened:
        record = opened.store.grant(granted["grant_id"])
        assert record is not None and record.ledger_receipt is not None
        entry = record.ledger_receipt["entry"]
    # The ledger holds the grant's digest and a salted commitment, never the DID itself.
    assert entry["type"] == "grant" and entry["grant_digest"] == granted["digest"]
    assert did not in json.dumps(entry)
    # An independent client gets a verified receipt for the same entry from the ledger.
    from ledger.client import LedgerClient

    with LedgerClient(ledger.address, ledger.ca_path.read_bytes()) as client:
        receipt = client.receipt(record.ledger_receipt["entry_hash"])
    assert receipt.event["grant_digest"] == granted["digest"]
    listed = json.loads(wallet.ok("grants", "--json").output)
    assert listed[0]["ledger_anchored"] is True
