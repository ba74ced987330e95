"""``privacy = "threshold"``, the weaker mode an operator must choose explicitly, against a
real ``sov-node serve``: every answer and access event says its mode, min / max / quantiles
are refused, no answer reveals how many groups were withheld, the overlap control stops the
two-answer differencing attack, and (as the README says) a tracker still defeats it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from agent_node.client import NodeError
from agent_node.requester import Answer, Requester
from consent.identity import Identity
from tests.agent_node.conftest import (
    NodeProcess,
    grant_all,
    run_cli,
    serving_customers,
    sqlite_home,
)

PURPOSE = "renewal-warning"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]
         ) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("threshold")
    home = sqlite_home(tmp, bank_rows, privacy="threshold")
    with serving_customers(home) as served:
        yield served


def _ask(node: NodeProcess, who: Identity, **query: Any) -> Answer:
    return Requester(who).ask(node.address, node.ca_pem, {
        "dataset": "contacts", "purpose": PURPOSE, "measures": ["count", "sum:duration"],
        **query})


def test_refused_measures_labelled_answers_and_no_withheld_count(
        node: NodeProcess, bank_rows: list[dict[str, Any]]) -> None:
    requester = Identity.generate()
    grant_all(node, requester, node.wallets, purpose=PURPOSE)
    for measure in ("min:age", "max:duration", "quantile:age:0.01", "median:age"):
        with pytest.raises(NodeError) as refused:
            _ask(node, requester, measures=[measure])
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "releases no min, max or quantile" in str(refused.value)
    answer = _ask(node, requester, group_by=["job"])
    assert answer.mode == "threshold" and answer.k == 5 and answer.dp is None
    assert answer.groups and all("accuracy" not in g for g in answer.groups)
    # One customer's contact or nobody: the same empty answer, the same sentence.
    pairs = [(r["age"], r["job"]) for r in bank_rows]
    target = next(r for r in bank_rows if pairs.count((r["age"], r["job"])) == 1)
    isolate = [{"column": "age", "op": "eq", "value": target["age"]},
               {"column": "job", "op": "eq", "value": target["job"]}]
    one = _ask(node, requester, filters=isolate).document["body"]["answer"]
    none = _ask(node, requester, filters=[*isolate, {"column": "duration", "op": "lt",
                                                     "value": -1}]).document["body"]["answer"]
    for body in (one, none):
        assert body["groups"] == [] and "suppressed_groups" not in body
    assert one["note"] == none["note"] and "nothing was released" in one["note"]
    assert {k: v for k, v in one.items() if k not in ("answered_at", "event_seq")} == \
        {k: v for k, v in none.items() if k not in ("answered_at", "event_seq")}
    events = json.loads(run_cli("sov-node", "log", "events", "--home", str(node.home),
                                "--json").stdout)
    mine = [e for e in events if e.get("requester") == requester.did]
    assert all(e["mode"] == "threshold" for e in mine)
    assert [e["released"] for e in mine if e["outcome"] == "answered"] == [True, False, False]


def test_overlap_control_stops_differencing(node: NodeProcess,
                                            bank_rows: list[dict[str, Any]]) -> None:
    """A total, then the same total without a handful (< k) of customers: the second is
    withheld, since the difference would describe them."""
    attacker = Identity.generate()
    grant_all(node, attacker, node.wallets, purpose=PURPOSE)
    assert _ask(node, attacker).groups
    ages = sorted({r["age"] for r in bank_rows})
    age = next(a for a in ages
               if 0 < len({r["customer_id"] for r in bank_rows if r["age"] == a}) < 5)
    without = _ask(node, attacker, filters=[{"column": "age", "op": "ne", "value": age}])
    assert without.groups == [] and without.note
    alone = _ask(node, attacker, filters=[{"column": "age", "op": "eq", "value": age}])
    assert alone.groups == []


def test_a_tracker_defeats_threshold_mode(node: NodeProcess,
                                          bank_rows: list[dict[str, Any]]) -> None:
    """The documented weakness: four answers whose sets pairwise differ by at least k are
    all released, and adding and subtracting them gives one contact's exact duration."""
    attacker = Identity.generate()
    grant_all(node, attacker, node.wallets, purpose=PURPOSE)
    a, b, c = "admin.", "services", "technician"
    duration = next(r["duration"] for r in bank_rows if r["job"] == a
                    and sum(x["duration"] == r["duration"] for x in bank_rows
                            if x["job"] in (a, c)) == 1)
    totals = [_ask(node, attacker, measures=["sum:duration"], filters=f)
              .groups[0]["values"]["sum:duration"] for f in (
                  [{"column": "job", "op": "in", "value": [a, b]}],
                  [{"column": "job", "op": "eq", "value": b}],
                  [{"column": "job", "op": "in", "value": [a, c]},
                   {"column": "duration", "op": "ne", "value": duration}],
                  [{"column": "job", "op": "eq", "value": c}])]
    assert totals[0] - totals[1] - totals[2] + totals[3] == duration


def test_a_grant_asking_for_dp_is_not_used_in_threshold_mode(node: NodeProcess) -> None:
    """A wallet that set --dp-epsilon asked for differential privacy, which this node does
    not provide: its grant is never used here."""
    requester = Identity.generate()
    grant_all(node, requester, node.wallets[:10], purpose="churn-analysis", dp_epsilon=1.0)
    with pytest.raises(NodeError) as refused:
        _ask(node, requester, purpose="churn-analysis")
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "does not provide" in str(refused.value)
