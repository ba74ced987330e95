"""Privacy budgets per customer against a real ``sov-node serve`` (two worker processes
sharing one vault): concurrent answers never overspend a grant, not even by a rounding
tolerance; a customer whose budget is spent is left out while the others still get an
answer that is no noisier; the customer's access log proves it was left out; bad input is
refused with nothing debited."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent_node.client import NodeClient, NodeError
from agent_node.requester import Requester
from consent.identity import Identity
from tests.agent_node.conftest import (
    NodeProcess,
    grant_all,
    serving_customers,
    sqlite_home,
)
from wallet.service import ANSWERED, LEFT_OUT, outcome_label

QUERY = {"dataset": "contacts", "measures": ["count"]}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]
         ) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("dp-budget")
    home = sqlite_home(tmp, bank_rows)
    with serving_customers(home, workers=2) as served:
        yield served


def _concurrently(node: NodeProcess, who: Identity, query: dict[str, Any], n: int
                  ) -> list[Any]:
    """``n`` queries fired at once, each over its own channel (spread over the workers)."""
    results: list[Any] = [None] * n
    clients = [NodeClient(node.address, node.ca_pem, who, timeout=60) for _ in range(n)]
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = Requester(who).ask_with(clients[i], query)
        except NodeError as exc:  # collected and asserted on below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for client in clients:
        client.close()
    return results


def test_concurrent_answers_never_overspend(node: NodeProcess) -> None:
    requester = Identity.generate()
    with node.client(requester) as client:  # the node says how it answers, signed
        assert client.node_info().document["privacy"] == {
            "mode": "dp", "unit": "customer", "library": "opendp", "epsilon_min": 0.05,
            "epsilon_max": 2.0, "default_epsilon": 1.0, "grant_budget": 10.0, "delta": 1e-9}
    ids = grant_all(node, requester, node.wallets[:20], purpose="churn-analysis",
                    dp_epsilon=1.0)
    query = {**QUERY, "purpose": "churn-analysis", "epsilon": 0.3}
    results = _concurrently(node, requester, query, 8)
    answered = [r for r in results if not isinstance(r, NodeError)]
    refused = [r for r in results if isinstance(r, NodeError)]
    # 3 x 0.3 = 0.9 fits in 1.0, a fourth would not: exactly three answers, whichever worker.
    assert len(answered) == 3
    assert all(r.code == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    with node.client(node.wallets[0]) as client:
        status = client.grant_status([ids[0]])[0]
    assert (status.epsilon_spent, status.epsilon_left) == (0.9, 0.1)  # exact, no float drift
    # 0.1 more reaches the budget exactly (0.9 + 0.1 as floats is 0.9999999999999999 or
    # 1.0000000000000002 depending on order; in micro-epsilon it is exactly 1000000).
    Requester(requester).ask(node.address, node.ca_pem, {**query, "epsilon": 0.1})
    with pytest.raises(NodeError) as spent:
        Requester(requester).ask(node.address, node.ca_pem, {**query, "epsilon": 0.05})
    assert "spent its privacy budget" in str(spent.value)
    with node.client(node.wallets[7]) as client:
        status = client.grant_status([ids[7]])[0]
    assert (status.epsilon_spent, status.epsilon_left, status.epsilon_budget) == (1.0, 0, 1.0)


def test_a_spent_customer_is_left_out_and_the_rest_still_answered(node: NodeProcess) -> None:
    requester = Identity.generate()
    [small] = grant_all(node, requester, node.wallets[:1], purpose="renewal-warning",
                        dp_epsilon=0.5)
    grant_all(node, requester, node.wallets[1:], purpose="renewal-warning")  # node default
    query = {**QUERY, "purpose": "renewal-warning", "epsilon": 0.5}
    first = Requester(requester).ask(node.address, node.ca_pem, query)
    second = Requester(requester).ask(node.address, node.ca_pem, query)
    # The spent customer alone changes nothing about the others' answer: same mechanism,
    # same noise scale, so the same interval width.
    widths = [g.groups[0]["accuracy"]["count"]["ci95"] for g in (first, second)]
    assert widths[0][1] - widths[0][0] == pytest.approx(widths[1][1] - widths[1][0])
    with node.client(node.wallets[0]) as client:
        events = [e for e in client.access_events().events
                  if e.get("purpose") == "renewal-warning"]
        status = client.grant_status([small])[0]
    assert [e["verified"] for e in events] == [True, True]
    assert events[0]["own_grants"] == [small] and events[0]["own_left_out"] == []
    assert events[1]["own_grants"] == [] and events[1]["own_left_out"] == [small]
    assert [outcome_label(e) for e in events] == [ANSWERED, LEFT_OUT]
    assert events[1]["mode"] == "dp" and events[1]["released"] is True
    assert events[1]["epsilon"] == 0.5 and events[1]["left_out_count"] == 1
    assert (status.epsilon_spent, status.epsilon_left) == (0.5, 0)
    # Another customer was read by both answers and debited twice from the node's default.
    with node.client(node.wallets[1]) as client:
        other = client.grant_status()[-1]
    assert (other.epsilon_spent, other.epsilon_budget, other.dp_epsilon) == (1.0, 10.0, None)


@pytest.mark.parametrize(("query", "code", "says"), [
    ({"epsilon": 2.5}, grpc.StatusCode.INVALID_ARGUMENT, "outside this node's bounds"),
    ({"measures": ["quantile:age:1.5"]}, grpc.StatusCode.INVALID_ARGUMENT,
     "strictly between 0 and 1"),
    ({"group_by": ["education"], "purpose": "fraud-prevention"},
     grpc.StatusCode.PERMISSION_DENIED, "identity"),
])
def test_bad_input_is_refused_and_debits_nothing(node: NodeProcess, query: dict[str, Any],
                                                 code: grpc.StatusCode, says: str) -> None:
    requester = Identity.generate()
    [gid] = grant_all(node, requester, node.wallets[:1], purpose="fraud-prevention")
    # Naming the grant links the refusal to it, so its customer sees the refusal.
    body = {**QUERY, "purpose": "fraud-prevention", "grant_ids": [gid], **query}
    with node.client(requester) as client, pytest.raises(NodeError) as info:
        client.query(body)  # straight to the node, past the library's local checks
    assert info.value.code == code and says in str(info.value)
    assert str(info.value).count(". ") == 0  # one sentence
    with node.client(node.wallets[0]) as client:
        status = client.grant_status([gid])[0]
        [event] = [e for e in client.access_events().events if e["requester"] == requester.did]
    assert status.epsilon_spent == 0 and status.queries_used == 0
    assert event["outcome"] == "refused" and event["released"] is False
    assert event["epsilon"] is None


def test_measures_and_group_by_need_declared_bounds(tmp_path: Path,
                                                    bank_rows: list[dict[str, Any]]) -> None:
    """A measure on a column without bounds, a group-by on a column without a declared
    contribution bound: refused with how to fix it (in-process: the data map differs)."""
    from agent_node.errors import PreconditionFailed
    from tests.agent_node.conftest import in_process_node

    parts = in_process_node(tmp_path, bank_rows, "bounds")
    text = parts.home.datamap_path.read_text()
    parts.home.datamap_path.write_text(text.replace(', bounds = [0, 1500]', '').replace(
        ', index = true, groups_per_subject = 3', ''))
    from agent_node.engine import QueryEngine

    engine = QueryEngine(parts.vault, parts.home.datamap(), parts.home.identity.did,
                         parts.engine.settings)
    requester = Identity.generate()
    for query, fix in (({"measures": ["sum:duration"]}, "adds bounds = [low, high]"),
                       ({"measures": ["count"], "group_by": ["job"]},
                        "groups_per_subject = N or public_keys = [...]")):
        with pytest.raises(PreconditionFailed) as info:
            engine.run({"dataset": "contacts", "purpose": "quote-generation", **query},
                       requester.did)
        assert fix in str(info.value)
