"""Reports (issue 15): several queries in one sealed request to a real ``sov-node serve``,
answered in one node-signed reply, each consent-checked, privacy-accounted and logged exactly
as if asked alone; a refused query refuses only itself and debits nothing; a report that is
empty or over the node's limit is refused whole in one sentence with nothing debited; the
same sealed report sent again is a replay."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent_node.client import NodeError
from agent_node.requester import Answer, Requester
from consent import protocol
from consent.identity import Identity
from tests.agent_node.conftest import (
    NodeProcess,
    grant_all,
    make_home,
    run_cli,
    serving_customers,
    set_privacy,
    sqlite_home,
)

COUNT = {"dataset": "contacts", "measures": ["count"]}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]
         ) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("reports")
    home = sqlite_home(tmp, bank_rows)
    set_privacy(home, "dp", max_report_queries=4)
    with serving_customers(home) as served:
        yield served


def _spent(node: NodeProcess, wallet: Identity, grant_id: str) -> float:
    with node.client(wallet) as client:
        return client.grant_status([grant_id])[0].epsilon_spent


def test_each_query_of_a_report_is_answered_or_refused_as_if_alone(node: NodeProcess) -> None:
    requester = Identity.generate()
    ids = grant_all(node, requester, node.wallets[:20], purpose="churn-analysis")
    asker = Requester(requester)
    results = asker.ask_report(node.address, node.ca_pem, [
        {**COUNT, "purpose": "churn-analysis", "epsilon": 0.5},
        # identity scope: the grants cover transaction data only, so this one alone is refused
        {**COUNT, "purpose": "churn-analysis", "epsilon": 0.5, "group_by": ["education"]},
        {**COUNT, "purpose": "churn-analysis", "epsilon": 0.25, "group_by": ["job"]},
    ])
    first, refused, third = results
    assert isinstance(first, Answer) and isinstance(third, Answer)
    assert isinstance(refused, NodeError) and refused.code == grpc.StatusCode.PERMISSION_DENIED
    assert "identity" in str(refused)
    # One signed reply for the report, one access event per query (answered ones in order).
    assert first.document is third.document
    assert third.event_seq > first.event_seq
    assert first.dp["epsilon"] == 0.5 and third.group_by == ["job"]
    # Debited exactly as the two answers alone would have; the refused query debited nothing.
    assert _spent(node, node.wallets[0], ids[0]) == 0.75
    with node.client(node.wallets[0]) as client:
        events = [e for e in client.access_events().events
                  if e.get("purpose") == "churn-analysis"]
    assert [(e["outcome"], e.get("epsilon")) for e in events] == [
        ("answered", 0.5), ("answered", 0.25)]
    assert all(e["verified"] for e in events)


def test_a_report_stops_debiting_a_grant_at_its_budget(node: NodeProcess) -> None:
    requester = Identity.generate()
    ids = grant_all(node, requester, node.wallets[20:30], purpose="renewal-warning",
                    dp_epsilon=1.0)
    query = {**COUNT, "purpose": "renewal-warning", "epsilon": 0.3}
    results = Requester(requester).ask_report(node.address, node.ca_pem, [query] * 4)
    assert [isinstance(r, Answer) for r in results] == [True, True, True, False]
    assert results[3].code == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[union-attr]
    assert _spent(node, node.wallets[20], ids[0]) == 0.9  # exact: never beyond the budget


@pytest.mark.parametrize(("queries", "says"), [
    ([], "the report is empty"),
    ([COUNT] * 5, "more than this node's limit of 4; split it"),
])
def test_an_empty_or_oversized_report_is_refused_whole(node: NodeProcess, queries: list[Any],
                                                        says: str) -> None:
    requester = Identity.generate()
    ids = grant_all(node, requester, node.wallets[30:32], purpose="quote-generation")
    with node.client(requester) as client, pytest.raises(NodeError) as info:
        client.report([{**q, "purpose": "quote-generation"} for q in queries])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert says in str(info.value) and "\n" not in str(info.value)
    assert _spent(node, node.wallets[30], ids[0]) == 0


def test_a_sealed_report_sent_twice_is_a_replay(node: NodeProcess) -> None:
    requester = Identity.generate()
    ids = grant_all(node, requester, node.wallets[32:34], purpose="fraud-prevention")
    query = {**COUNT, "purpose": "fraud-prevention", "epsilon": 0.5}
    with node.client(requester) as client:
        envelope, nonce = client.sealed_request("Query", protocol.report_body([query, query]))
        client.send("Query", envelope, nonce)
        with pytest.raises(NodeError) as info:
            client.send("Query", envelope, nonce)
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert _spent(node, node.wallets[32], ids[0]) == 1.0  # the first report's two answers


def test_the_report_limit_is_a_node_setting(tmp_path: Path) -> None:
    home = make_home(tmp_path, "")
    set_privacy(home, "dp", max_report_queries=0)
    failed = run_cli("sov-node", "grants", "list", "--home", str(home), check=False)
    assert failed.returncode != 0
    assert "max_report_queries" in failed.stderr and "Traceback" not in failed.stderr


def test_sov_query_asks_several_questions_as_one_report(node: NodeProcess, tmp_path: Path
                                                        ) -> None:
    from consent.keystore import load_identity

    home = tmp_path / "requester"
    run_cli("sov-query", "init", "--home", str(home))
    requester = load_identity(home / "requester.key", "correct horse battery staple")
    grant_all(node, requester, node.wallets[34:44], purpose="marketing-analytics")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(node.ca_pem)
    ask = ["sov-query", "ask", "--home", str(home), "--node", node.address, "--ca", str(ca)]
    out = run_cli(*ask, "--dataset", "contacts", "--purpose", "marketing-analytics",
                  "--epsilon", "0.5", "--measure", "count", "--measures", "count,avg:age",
                  "--json")
    results = json.loads(out.stdout)
    assert [list(r) for r in results] == [["answer"], ["answer"]]
    assert results[1]["answer"]["measures"] == ["count", "avg:age"]
    assert results[0]["answer"]["event_seq"] < results[1]["answer"]["event_seq"]
    # A report file: the refused question is shown and makes the exit status 1.
    report = tmp_path / "report.json"
    report.write_text(json.dumps([
        {"dataset": "contacts", "purpose": "marketing-analytics", "measures": ["count"],
         "epsilon": 0.5},
        {"dataset": "contacts", "purpose": "marketing-analytics", "measures": ["count"],
         "group_by": ["education"], "epsilon": 0.5}]))
    shown = run_cli(*ask, "--report", str(report), check=False)
    assert shown.returncode == 1 and "Traceback" not in shown.stderr
    assert "question 1: \ncount" in shown.stdout and "question 2: refused:" in shown.stdout
    assert "1 of 2 questions were refused" in shown.stderr
    mixed = run_cli(*ask, "--report", str(report), "--dataset", "contacts", check=False)
    assert mixed.returncode == 2 and "either --report or" in mixed.stderr
