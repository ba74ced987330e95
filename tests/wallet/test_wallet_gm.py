"""The wallet in the ``gm`` (national-standard) profile end to end against a real gm agent node
process: ``consent-wallet init --profile gm``, grant (SM2 + Ed25519 proofs, delivered in an
SM2-authenticated SM4-GCM session), a gm requester's query, the verified access log, revocation
confirmed by the node, and the refused next query.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_node.client import NodeError
from agent_node.requester import Requester
from consent.identity import Identity
from consent.integrity import EDDSA_JCS, SM2_JCS, verify_document
from tests.wallet import conftest as wallet_conftest
from tests.wallet.conftest import NodeProcess
from tests.wallet.wallet_helpers import PASSPHRASE, WalletCLI
from wallet.service import Wallet

QUERY = {"dataset": "orders", "purpose": "quote-generation", "measures": ["count", "sum:amount"],
         "group_by": []}


@pytest.fixture
def gm_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NodeProcess]:
    """The wallet tests' node, initialised with ``sov-node init --profile gm``.

    The shared fixture's ``sov-node`` runner is wrapped only to add the profile option to its
    real ``init`` call; everything still runs the real CLI.
    """
    real = wallet_conftest._sov_node

    def with_gm(*args: str) -> str:
        return real(*args, "--profile", "gm") if args[0] == "init" else real(*args)

    monkeypatch.setattr(wallet_conftest, "_sov_node", with_gm)
    process = NodeProcess(tmp_path, name="distributor-cn", region="cn-east")
    process.start()
    yield process
    process.stop()


def test_gm_wallet_grant_query_access_log_revoke(wallet_cli: WalletCLI,
                                                  gm_node: NodeProcess) -> None:
    wallet = wallet_cli
    created = json.loads(wallet.ok("init", "--profile", "gm", "--json").output)
    assert created["profile"] == "gm"
    gm_node.bind(created["did"])
    crm = Identity.generate("gm")

    added = json.loads(wallet.ok("nodes", "add", gm_node.address, "--ca",
                                 str(gm_node.ca_path), "--json").output)
    assert added["did"] == gm_node.did and added["profile"] == "gm"

    granted = json.loads(wallet.ok(
        "grant", "--node", gm_node.address, "--requester", crm.did, "--purpose",
        "quote-generation", "--scope", "transaction", "--ttl", "24h", "--json").output)
    grant_id = granted["grant_id"]
    assert granted["delivered"] is True
    with Wallet.open(wallet.home, PASSPHRASE) as opened:
        stored = opened.store.grant(grant_id)
    assert stored is not None
    # The gm wallet's grant carries the SM2 proof chained to the Ed25519 one.
    assert [p["cryptosuite"] for p in stored.credential["proof"]] == [SM2_JCS, EDDSA_JCS]
    assert verify_document(stored.credential, require_sm2=True) == created["did"]

    answer = Requester(crm).ask(gm_node.address, gm_node.ca_pem,
                                {**QUERY, "grant_ids": [grant_id]})
    assert answer.node_did == gm_node.did and answer.dataset == "orders"

    log = json.loads(wallet.ok("access-log", "--json").output)
    assert log["unreachable"] == {}
    [event] = log["events"]
    assert event["verified"] is True
    assert event["event"]["requester"] == crm.did and event["event"]["own_grants"] == [grant_id]

    revoked = json.loads(wallet.ok("revoke", grant_id, "--reason", "done", "--json").output)
    assert revoked["confirmed"] is True
    with pytest.raises(NodeError, match="revoked"):
        Requester(crm).ask(gm_node.address, gm_node.ca_pem, {**QUERY, "grant_ids": [grant_id]})
    assert json.loads(wallet.ok("grants", "--json").output)[0]["status"] == "revoked"
    log = json.loads(wallet.ok("access-log", "--json").output)
    assert len(log["events"]) == 2 and all(e["verified"] for e in log["events"])
