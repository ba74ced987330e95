"""A customer's own ledger entries (ledger.customer), on a real node and ledger over TLS.

The wallet signs each grant's entry with a per-grant key bound inside the grant; the node
that accepted the grant endorses it; the ledger takes it on the node's authority. The
ledger never sees the customer's DID, two grants' entries are not linkable by their author,
an officer holding the grant can tell the entry is the customer's, and nobody else's entry
passes that check. The node endorses nothing but what it accepted.
"""

from __future__ import annotations

import json
import secrets
from datetime import timedelta

import pytest

from agent_node.client import NodeClient
from consent.grants import issue_grant, verify_grant
from consent.identity import Identity
from ledger.authority import check_customer_entry, check_entry, sign_entry
from ledger.customer import grant_entry, grant_key
from ledger.errors import PermissionDenied
from ledger.events import encode_event, subject_commitment
from tests.wallet.conftest import LedgerProcess, NodeProcess
from tests.wallet.wallet_helpers import PASSPHRASE, WalletCLI
from wallet.service import Wallet


def _grant(wallet: WalletCLI, node: NodeProcess) -> dict[str, object]:
    return json.loads(wallet.ok(  # type: ignore[no-any-return]
        "grant", "--node", node.address, "--node-ca", str(node.ca_path), "--requester",
        Identity.generate().did, "--purpose", "churn-analysis", "--scope", "sentiment",
        "--ttl", "2h", "--json").output)


def test_grant_entries_are_the_customers_and_unlinkable(
    initialised: WalletCLI, node: NodeProcess, ledger: LedgerProcess
) -> None:
    wallet = initialised
    did = json.loads(wallet.ok("whoami", "--json").output)["did"]
    node.bind(did)
    ledger.register(node.did)
    wallet.ok("ledger", "set", ledger.address, "--ca", str(ledger.ca_path))
    first, second = _grant(wallet, node), _grant(wallet, node)
    assert first["ledger_anchored"] is True and second["ledger_anchored"] is True
    wallet.ok("revoke", str(first["grant_id"]))
    with Wallet.open(wallet.home, PASSPHRASE) as opened:
        records = [opened.store.grant(str(g["grant_id"])) for g in (first, second)]
        revocation = opened.store.revocation(str(first["grant_id"]))
    assert revocation is not None and revocation.ledger_receipt is not None
    entries = [r.ledger_receipt["entry"] for r in records if r and r.ledger_receipt]
    grants = [verify_grant(r.credential, now=r.issued) for r in records if r]
    for entry, grant in zip(entries, grants, strict=True):
        assert entry["author"] == grant.ledger_key != did and entry["endorser"] == node.did
        assert did not in json.dumps(entry)
        check_customer_entry(entry, grant)  # what an officer holding the grant checks
    assert entries[0]["author"] != entries[1]["author"]  # no key links the two grants
    with pytest.raises(PermissionDenied, match="another grant"):
        check_customer_entry(entries[1], grants[0])
    # The revocation is written with the same per-grant key, endorsed by the same node.
    revoked = revocation.ledger_receipt["entry"]
    assert revoked["author"] == entries[0]["author"] and revoked["endorser"] == node.did
    assert check_entry(revoked, encode_event(revoked), None).endorser == node.did


def test_an_entry_by_someone_else_fails_the_officers_check(
    initialised: WalletCLI, node: NodeProcess, ledger: LedgerProcess
) -> None:
    # The node (or anyone) can sign an entry for a grant it knows, but not with the key the
    # customer bound inside the grant.
    wallet = initialised
    node.bind(json.loads(wallet.ok("whoami", "--json").output)["did"])
    ledger.register(node.did)
    wallet.ok("ledger", "set", ledger.address, "--ca", str(ledger.ca_path))
    granted = _grant(wallet, node)
    with Wallet.open(wallet.home, PASSPHRASE) as opened:
        record = opened.store.grant(str(granted["grant_id"]))
    assert record is not None and record.ledger_receipt is not None
    grant = verify_grant(record.credential, now=record.issued)
    forged = {**record.ledger_receipt["entry"], "author": Identity.generate().did}
    with pytest.raises(PermissionDenied, match="not the customer's"):
        check_customer_entry(forged, grant)


def test_the_node_endorses_only_what_it_accepted(node: NodeProcess) -> None:
    customer = Identity.generate()
    node.bind(customer.did)
    salt = secrets.token_bytes(32)
    commitment = subject_commitment(customer.did, salt)
    client = NodeClient(node.address, node.ca_pem, customer)
    try:
        def submit(**change: object) -> dict[str, object]:
            grant_id = f"urn:uuid:{secrets.token_hex(4)}-0000-4000-8000-000000000000"
            key = grant_key(customer, grant_id)
            credential = issue_grant(customer, requester=Identity.generate().did,
                                     nodes=[node.did], purpose="churn-analysis",
                                     scopes=["sentiment"], ttl=timedelta(hours=1),
                                     grant_id=grant_id, ledger_key=key.did)
            event = {**grant_entry(verify_grant(credential), commitment, node.did), **change}
            ack = client.submit_grant(credential, subject_salt=salt.hex(),
                                      ledger_entry=sign_entry(event, key))
            return ack.document["body"]  # type: ignore[no-any-return]

        honest = submit()
        assert len(str(honest["ledger_endorsement"])) == 128
        lied = submit(purpose="marketing-analytics")  # not what the customer granted
        assert "ledger_endorsement" not in lied and "does not record" in str(lied["ledger_refusal"])
        assert lied["grant_id"]  # the grant itself stands: it was valid
        other_node = submit(endorser=Identity.generate().did)
        assert "ledger_endorsement" not in other_node
    finally:
        client.close()


def test_a_node_the_ledger_does_not_know_cannot_vouch(
    initialised: WalletCLI, node: NodeProcess, ledger: LedgerProcess
) -> None:
    wallet = initialised
    node.bind(json.loads(wallet.ok("whoami", "--json").output)["did"])
    wallet.ok("ledger", "set", ledger.address, "--ca", str(ledger.ca_path))
    granted = _grant(wallet, node)  # the operator never registered this node
    assert granted["delivered"] is True and granted["ledger_anchored"] is False
    assert "PERMISSION_DENIED" in str(granted["message"])
    assert "not registered" in str(granted["message"])
