"""Contribution bounds, before any noise (in-process engine over a real SQLite vault; the
engine's aggregation step is called directly because what it returns is exactly what the
noise is calibrated to): one customer, however many rows they have and however many groups
they span, moves the bounded counts by at most ``max_rows_per_subject`` in all, the clamped
sums by that many times the bound, and touches at most ``groups_per_subject`` groups; two
source ids bound to one customer are bounded together."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_node.query import query_from_dict
from agent_node.vault import table_name
from consent.grants import issue_grant
from consent.identity import Identity
from tests.agent_node.conftest import InProcessNode, in_process_node

CAP, HIGH, L0 = 6, 1500.0, 3
PURPOSE = "marketing-analytics"
QUERY = {"dataset": "contacts", "purpose": PURPOSE, "group_by": ["job"],
         "measures": ["count", "sum:duration"]}


@pytest.fixture(scope="module")
def heavy(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]
          ) -> InProcessNode:
    """The bank rows plus 60 more contacts of customer C000 over eight jobs, with long
    durations: far beyond every bound."""
    jobs = sorted({r["job"] for r in bank_rows})[:8]
    extra = [{**bank_rows[0], "contact_id": 10_000 + i, "job": jobs[i % 8], "duration": 4000}
             for i in range(60)]
    return in_process_node(tmp_path_factory.mktemp("bounds"), bank_rows + extra, "bounds")


def _stats(node: InProcessNode, wallets: list[Identity]) -> dict[tuple[Any, ...], Any]:
    requester = Identity.generate()
    for wallet in wallets:
        node.store.submit(issue_grant(wallet, requester=requester.did,
                                      nodes=[node.home.identity.did], purpose=PURPOSE,
                                      scopes=["transaction"], ttl=timedelta(hours=1)))
    engine, query = node.engine, query_from_dict(QUERY)
    dataset, columns, scopes = engine._validate(query)
    with engine.vault.snapshot() as conn:
        grants = engine._grants(conn, query, requester.did, scopes, datetime.now(UTC))
        _, trivial = engine._eligible(conn, query, requester.did, grants)
        stats = engine._aggregate_dp(conn, table_name("contacts"), query, dataset, columns,
                                     False, trivial, L0, None)
    return {key: (g["units"], g["rows"], g["s:duration"]) for key, g in stats.items()}


def _l1(a: dict[Any, Any], b: dict[Any, Any], at: int) -> float:
    return sum(abs((a.get(k) or (0, 0, 0.0))[at] - (b.get(k) or (0, 0, 0.0))[at])
               for k in a.keys() | b.keys())


def test_one_customer_moves_each_statistic_by_at_most_its_bound(heavy: InProcessNode) -> None:
    everyone = _stats(heavy, heavy.wallets)
    without = _stats(heavy, heavy.wallets[1:])  # C000 (wallet 0) removed
    assert 0 < _l1(everyone, without, 1) <= CAP            # rows, over all groups
    assert 0 < _l1(everyone, without, 2) <= CAP * HIGH     # clamped sums
    assert 0 < _l1(everyone, without, 0) <= L0             # groups touched
    # The customer's 66 raw rows would have moved the count by 66 without the bounds.


def test_two_ids_of_one_customer_are_bounded_together(tmp_path: Path,
                                                      bank_rows: list[dict[str, Any]]) -> None:
    node = in_process_node(tmp_path, bank_rows, "merged")
    node.vault.bind(["C001"], node.wallets[0].did)  # wallet 0 now holds C000 and C001
    alone = _stats(node, [node.wallets[0]])
    assert sum(rows for _, rows, _ in alone.values()) <= CAP  # 12 raw rows, capped as one
    assert sum(units for units, _, _ in alone.values()) <= L0
