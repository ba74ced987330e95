"""Training runs in one process: the coordinator's strategy (coordinator.training) drives
the nodes' ClientApps (agent_node.training over real vaults) through an in-process grid."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent_node.training import VaultSource
from consent.grants import issue_revocation
from consent.identity import Identity
from coordinator.training import RunOptions, TrainingRunError, run_training
from fl.client import make_client_app
from fl.inprocess import InProcessGrid
from fl.protocol import PURPOSE
from tests.fl.conftest import CONSENTING, Node, signed_plan

FAST = {"round_timeout": 2.0, "node_wait": 0.5, "poll": 0.01}


def grid_of(sources: list[Any], run_id: int = 1) -> InProcessGrid:
    return InProcessGrid({i + 1: make_client_app(lambda context, s=s: s)
                          for i, s in enumerate(sources)}, run_id=run_id)


def training_events(node: Node, plan_id: str) -> list[dict[str, Any]]:
    with node.vault.connection() as conn:
        bodies = [json.loads(b) for (b,) in conn.execute("SELECT body FROM access_log")]
    return [b for b in bodies if b.get("training_run") == plan_id]


def spent(node: Node, grant_id: str) -> int:
    with node.vault.connection() as conn:
        row = conn.execute("SELECT spent_micro FROM grant_usage WHERE grant_id = ?",
                           (grant_id,)).fetchone()
    return int(row[0]) if row else 0


def test_full_dp_run_uses_only_consenting_customers_and_debits_each_round(
        nodes: list[Node], requester: Identity) -> None:
    for node in nodes:
        node.source.touched.clear()
    plan = signed_plan(requester, dp=1.0, stats_epsilon=0.5)
    before = {n.grant_ids[0]: spent(n, n.grant_ids[0]) for n in nodes}
    outcome = run_training(grid_of([n.source for n in nodes]), plan,
                           RunOptions(rounds=2, min_nodes=3, **FAST))
    assert [r["round"] for r in outcome.rounds] == [1, 2]
    # The weights are the nodes' noisy counts (Laplace, scale 6 each here), never exact.
    assert all(r["nodes"] == 3 and abs(r["examples"] - 3 * CONSENTING) < 60
               for r in outcome.rounds)
    assert "train-loss" not in outcome.rounds[0]  # no noiseless statistic under DP
    assert set(outcome.state) == {"0.weight", "0.bias"}
    for node in nodes:
        consenting = node.sids(node.wallets[:CONSENTING])
        # Non-consenting customers (another purpose, or no grant) are never read.
        assert node.source.touched == consenting
        with node.vault.connection() as conn:
            digests = {d for (d,) in conn.execute(
                "SELECT digest FROM grants WHERE grant_id IN (SELECT value FROM json_each(?))",
                (json.dumps(node.grant_ids),))}
        assert set(outcome.nodes[node.source.node.identity.did]) == digests
        events = training_events(node, plan["id"])
        assert [(e["phase"], e["round"]) for e in events] == [("moments", 0), ("train", 1),
                                                              ("train", 2)]
        assert all(e["subject_count"] == CONSENTING and e["purpose"] == PURPOSE
                   for e in events)
        # One atomic debit per phase: 0.5 for the statistics, 1.0 per round, in micro-epsilon.
        assert spent(node, node.grant_ids[0]) - before[node.grant_ids[0]] == 2_500_000


def test_a_revoked_customer_is_left_out_of_the_next_run(nodes: list[Node],
                                                        requester: Identity) -> None:
    node = nodes[0]
    leaver = node.wallets[0]
    node.store.revoke(issue_revocation(leaver, node.grant_ids[0]))
    node.source.touched.clear()
    plan = signed_plan(requester, dp=1.0, stats_epsilon=0.5)
    outcome = run_training(grid_of([n.source for n in nodes]), plan,
                           RunOptions(strategy="fedprox", rounds=1, min_nodes=3, **FAST))
    assert not node.source.touched & node.sids([leaver])
    assert outcome.rounds[0]["nodes"] == 3


def test_budgeted_grants_never_feed_training_without_dp(nodes: list[Node],
                                                        requester: Identity) -> None:
    """Every grant at a dp-mode node has a budget, so a plan without DP-SGD finds nobody."""
    with pytest.raises(TrainingRunError, match="fewer than the node's minimum"):
        run_training(grid_of([nodes[1].source]), signed_plan(requester, dp=None),
                     RunOptions(rounds=1, min_nodes=1, **FAST))


def test_a_node_below_its_minimum_refuses_and_the_run_goes_on(nodes: list[Node],
                                                              requester: Identity) -> None:
    strict = VaultSource(nodes[2].source.node, nodes[2].vault, nodes[2].source.settings,
                         min_customers=CONSENTING + 1)
    grid = grid_of([nodes[0].source, nodes[1].source, strict])
    outcome = run_training(grid, signed_plan(requester), RunOptions(rounds=1, min_nodes=2,
                                                                    **FAST))
    assert outcome.rounds[0]["nodes"] == 2
    assert "fewer than the node's minimum" in outcome.dropped[3]
    with pytest.raises(TrainingRunError, match="fewer than the minimum of 3"):
        run_training(grid_of([nodes[0].source, strict]), signed_plan(requester),
                     RunOptions(rounds=1, min_nodes=3, **FAST))


def test_forged_or_replayed_plans_are_refused(nodes: list[Node], requester: Identity) -> None:
    source = nodes[1].source
    plan = signed_plan(requester)
    forged = {**plan, "requester": Identity.generate().did}
    replies: dict[str, str] = {}
    for name, doc, run in (("forged", forged, 7), ("first", plan, 8), ("replay", plan, 9)):
        grid = grid_of([source], run_id=run)
        try:
            run_training(grid, doc, RunOptions(rounds=1, min_nodes=1, **FAST))
            replies[name] = "ok"
        except TrainingRunError as exc:
            replies[name] = str(exc)
    assert "signature does not verify" in replies["forged"]
    assert replies["first"] == "ok"
    assert "already used by run 8" in replies["replay"]
