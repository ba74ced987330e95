"""The wallet's view of differential privacy against a real node in its default (dp) mode:
the budget left on each grant, and each access as "answered", "asked, nothing released" or
"left out: budget spent"."""

from __future__ import annotations

import json

import pytest

from agent_node.client import NodeError
from agent_node.requester import Requester
from consent.identity import Identity
from tests.wallet.conftest import NodeProcess
from tests.wallet.wallet_helpers import WalletCLI

QUERY = {"dataset": "orders", "purpose": "quote-generation", "measures": ["count", "sum:amount"]}


def test_budget_left_and_what_each_access_meant(initialised: WalletCLI,
                                                node: NodeProcess) -> None:
    wallet = initialised
    node.bind(json.loads(wallet.ok("whoami", "--json").output)["did"])
    crm = Identity.generate()
    wallet.ok("nodes", "add", node.address, "--ca", str(node.ca_path))
    granted = json.loads(wallet.ok(
        "grant", "--node", node.address, "--requester", crm.did, "--purpose", "quote-generation",
        "--scope", "transaction", "--ttl", "24h", "--dp-epsilon", "1.0", "--json").output)
    grant_id = granted["grant_id"]
    asker = Requester(crm)

    answer = asker.ask(node.address, node.ca_pem, {**QUERY, "epsilon": 0.6})
    assert answer.mode == "dp" and answer.dp is not None and answer.dp["epsilon"] == 0.6
    # Grouped by region (one region per customer): with one consenting customer no group
    # passes the noisy release threshold (it would with probability below delta = 1e-9).
    empty = asker.ask(node.address, node.ca_pem, {**QUERY, "epsilon": 0.3,
                                                  "group_by": ["region"]})
    assert empty.groups == [] and empty.note and "threshold" in empty.note
    human = wallet.ok("grants").output
    assert "privacy budget epsilon 0.1/1 left" in human
    [view] = json.loads(wallet.ok("grants", "--json").output)
    assert (view["epsilon_spent"], view["epsilon_left"]) == (0.9, 0.1)

    # 0.1 left, 0.6 asked: this customer is left out (the only one, so the answer is
    # refused), nothing is debited, and the wallet says why.
    with pytest.raises(NodeError, match="spent its privacy budget"):
        asker.ask(node.address, node.ca_pem, {**QUERY, "epsilon": 0.6})
    log = wallet.ok("access-log").output.splitlines()
    assert len(log) == 3
    assert "  answered (epsilon 0.6 debited)  under your grant" in log[0]
    assert "  asked, nothing released (epsilon 0.3 debited)  under your grant" in log[1]
    assert "  left out: budget spent  under none of your grants" in log[2]
    assert all("[verified" in line for line in log)
    [view] = json.loads(wallet.ok("grants", "--json").output)
    assert (view["epsilon_spent"], view["epsilon_left"], view["id"]) == (0.9, 0.1, grant_id)
