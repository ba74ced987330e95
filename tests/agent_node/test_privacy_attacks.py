"""The three attacks of issue 10, as a determined requester runs them against a real
``sov-node serve`` process in its default mode (differential privacy), with valid grants and
only the documented requester interface.

Statistical assertions state their false-failure rate (each at most 1e-6): the noise comes
from OpenDP's own generator, never seeded here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from agent_node import privacy
from agent_node.client import NodeError
from agent_node.requester import Answer, Requester
from consent.identity import Identity
from tests.agent_node.conftest import (
    SUBJECTS,
    NodeProcess,
    bind_all,
    grant_all,
    run_cli,
    serve,
    set_privacy,
    sqlite_home,
    stop,
)

PURPOSE = "marketing-analytics"
CAP = 6  # max_rows_per_subject in the test data map
HIGH = 1500.0  # duration's upper bound in the test data map


@pytest.fixture(scope="module")
def dp_node(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]
            ) -> Iterator[NodeProcess]:
    """A node in dp mode whose grants have budget for the repeated attacks below."""
    tmp = tmp_path_factory.mktemp("dp-attacks")
    home = sqlite_home(tmp, bank_rows)
    set_privacy(home, "dp", grant_budget=200.0)
    run_cli("sov-node", "sync", "--home", str(home))
    wallets = [Identity.generate() for _ in range(SUBJECTS)]
    bind_all(home, wallets)
    node = serve(home)
    node.wallets = wallets
    try:
        yield node
    finally:
        stop(node)


def _ask(node: NodeProcess, who: Identity, **query: Any) -> Answer:
    return Requester(who).ask(node.address, node.ca_pem, {
        "dataset": "contacts", "purpose": PURPOSE, **query})


def test_the_binary_search_oracle_no_longer_finds_a_value(
        dp_node: NodeProcess, bank_rows: list[dict[str, Any]]) -> None:
    """The attacker isolates one contact by (age, job) and binary-searches its duration with
    ``duration > X``. Before, an empty answer said 'suppressed_groups: 1' when the contact
    matched and 0 when not; now every answer is a noisy count of the same shape."""
    attacker = Identity.generate()
    ids = grant_all(dp_node, attacker, dp_node.wallets, purpose=PURPOSE)
    pairs = [(r["age"], r["job"]) for r in bank_rows]
    target = next(r for r in bank_rows if pairs.count((r["age"], r["job"])) == 1)
    isolate = [{"column": "age", "op": "eq", "value": target["age"]},
               {"column": "job", "op": "eq", "value": target["job"]}]

    # A tiny epsilon no longer buys a near-exact answer: refused, nothing debited.
    with pytest.raises(NodeError) as tiny:
        _ask(dp_node, attacker, measures=["count"], filters=isolate, epsilon=0.00001)
    assert tiny.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside this node's bounds [0.05, 2]" in str(tiny.value)
    with dp_node.client(dp_node.wallets[0]) as client:
        assert client.grant_status([ids[0]])[0].epsilon_spent == 0

    # Matching the contact or nobody: the same shape, no withheld count, one noisy value.
    hit = _ask(dp_node, attacker, measures=["count"], epsilon=0.05,
               filters=[*isolate, {"column": "duration", "op": "ge", "value": 0}])
    miss = _ask(dp_node, attacker, measures=["count"], epsilon=0.05,
                filters=[*isolate, {"column": "duration", "op": "gt", "value": 99999}])
    for answer in (hit, miss):
        body = answer.document["body"]["answer"]
        assert "suppressed_groups" not in body and "withheld" not in body
        assert answer.mode == "dp" and len(answer.groups) == 1
    assert set(hit.document["body"]["answer"]) == set(miss.document["body"]["answer"])

    asked = [0]

    def search() -> int:
        low, high = 0, 1500  # the answer lies in (low, high]; 10 or 11 halvings
        while high - low > 1:
            mid = (low + high) // 2
            asked[0] += 1
            noisy = _ask(dp_node, attacker, measures=["count"], epsilon=0.05, filters=[
                *isolate, {"column": "duration", "op": "gt", "value": mid}])
            if noisy.groups[0]["values"]["count"] >= 1:
                low = mid
            else:
                high = mid
        return high

    # Each step's count has discrete Laplace noise of scale 6 / 0.05 = 120, so a step goes
    # the right way with probability below 0.503, all (at least 10) below 0.503^10 < 1.1e-3,
    # and three exact recoveries in a row below 1.4e-9 (the false-failure rate).
    found = [search() for _ in range(3)]
    assert found != [target["duration"]] * 3
    # The exact duration was recoverable before; here the probes cost epsilon like any answer.
    with dp_node.client(dp_node.wallets[0]) as client:
        assert client.grant_status([ids[0]])[0].epsilon_spent == pytest.approx(
            0.05 * (2 + asked[0]), abs=1e-9)


def test_a_tracker_errs_by_the_mechanisms_scale(dp_node: NodeProcess,
                                                bank_rows: list[dict[str, Any]]) -> None:
    """Four released totals whose sets pairwise differ by many customers, added and
    subtracted, isolate the rows of one contact; the noise of four answers stays in it."""
    attacker = Identity.generate()
    grant_all(dp_node, attacker, dp_node.wallets, purpose=PURPOSE)
    a, b, c = "admin.", "services", "technician"
    rows_a = [r for r in bank_rows if r["job"] == a]
    duration = next(r["duration"] for r in rows_a
                    if sum(x["duration"] == r["duration"] for x in bank_rows
                           if x["job"] in (a, c)) == 1)
    target = min(duration, HIGH)  # what the node sums: each value clamped to the bounds
    queries = [[{"column": "job", "op": "in", "value": [a, b]}],
               [{"column": "job", "op": "eq", "value": b}],
               [{"column": "job", "op": "in", "value": [a, c]},
                {"column": "duration", "op": "ne", "value": duration}],
               [{"column": "job", "op": "eq", "value": c}]]
    scale = CAP * HIGH / 0.5  # L1 sensitivity of a customer's clamped total / epsilon
    close = 0
    for _ in range(5):
        totals = []
        for filters in queries:
            answer = _ask(dp_node, attacker, measures=["sum:duration"], filters=filters,
                          epsilon=0.5)
            group = answer.groups[0]
            low, high = group["accuracy"]["sum:duration"]["ci95"]
            # The 95 % interval's half-width is the discrete Laplace bound at that scale.
            assert (high - low) / 2 == pytest.approx(
                privacy.dp.discrete_laplacian_scale_to_accuracy(scale, 0.05), rel=1e-6)
            totals.append(group["values"]["sum:duration"])
        estimate = totals[0] - totals[1] - totals[2] + totals[3]
        close += abs(estimate - target) < scale / 20
    # The estimate's error is a sum of four independent discrete Laplace noises of scale
    # 18000: it lands within scale / 20 of the truth with probability at most
    # (scale / 10 + 1) * max pmf <= 0.0501, all five times with probability < 3.2e-7.
    assert close < 5


def test_no_extreme_is_a_customers_exact_value(dp_node: NodeProcess,
                                               bank_rows: list[dict[str, Any]]) -> None:
    """min and max are refused with a hint; a quantile near 0 or 1 of a small released group
    comes from the exponential mechanism over candidates fixed by the data map's bounds,
    never from a row."""
    attacker = Identity.generate()
    grant_all(dp_node, attacker, dp_node.wallets, purpose=PURPOSE)
    for extreme, hint in (("max", "quantile:duration:0.95"), ("min", "quantile:duration:0.05")):
        with pytest.raises(NodeError) as refused:
            _ask(dp_node, attacker, measures=[f"{extreme}:duration"])
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert hint in str(refused.value)
    group = [r for r in bank_rows if r["job"] == "housemaid"][:8]
    ages = sorted({r["age"] for r in group})
    filters = [{"column": "job", "op": "eq", "value": "housemaid"},
               {"column": "age", "op": "in", "value": ages}]
    exact = [min(r["duration"], HIGH) for r in bank_rows
             if r["job"] == "housemaid" and r["age"] in ages]
    grid = privacy.quantile_candidates(0.0, HIGH, True)
    off_grid = {v for v in exact if v not in grid}
    assert min(exact) in off_grid and max(exact) in off_grid  # so equality would be a leak
    for _ in range(3):
        answer = _ask(dp_node, attacker, filters=filters, epsilon=1.0,
                      measures=["quantile:duration:0.01", "quantile:duration:0.99"])
        values = answer.groups[0]["values"]
        for label in ("quantile:duration:0.01", "quantile:duration:0.99"):
            assert values[label] in grid and values[label] not in off_grid
            assert answer.groups[0]["accuracy"][label]["rank_error"] > 0
    rank = answer.groups[0]["accuracy"]["quantile:duration:0.01"]["rank_error"]
    assert rank == pytest.approx(2 * CAP * math.log(len(grid) / 0.05) / 0.5, abs=0.1)
