"""The debit journal (agent_node.spend, issue 15): an answer debits its grant set with one
journal row, whatever the number of consenting customers; each grant's spend is derived
exactly; two engines sharing a vault (two worker processes, each with its own headroom
cache) never overspend a grant through overlapping grant sets. The race between a read and
its commit is driven step by step through the engine's two phases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_node.engine import QueryEngine, _Stale
from agent_node.query import query_from_dict
from consent.grants import issue_grant
from consent.identity import Identity
from tests.agent_node.conftest import InProcessNode, in_process_node

QUERY = {"dataset": "contacts", "purpose": "churn-analysis", "measures": ["count"]}


def _grant(node: InProcessNode, requester: Identity, wallet: Identity, **kwargs: Any) -> str:
    grant, _ = node.store.submit(issue_grant(
        wallet, requester=requester.did, nodes=[node.home.identity.did],
        purpose="churn-analysis", scopes=["transaction"], ttl=timedelta(hours=24), **kwargs))
    return str(grant.id)


def _epsilon_spent(node: InProcessNode, wallet: Identity, grant_id: str) -> float:
    [status] = [s for s in node.store.status(wallet.did, [grant_id])]
    return float(status["epsilon_spent"])


def test_an_answer_is_one_journal_row_whatever_the_population(tmp_path: Path,
                                                               bank_rows: list[dict]) -> None:
    node = in_process_node(tmp_path, bank_rows, "journal")
    requester = Identity.generate()
    ids = [_grant(node, requester, w) for w in node.wallets]
    for _ in range(3):
        node.engine.run({**QUERY, "epsilon": 0.25}, requester.did)
    with node.vault.connection() as conn:
        assert conn.execute("SELECT COUNT(*) FROM grant_usage").fetchone()[0] == 0
        rows = conn.execute("SELECT queries, spent_micro FROM grant_set_spend").fetchall()
    # The answers' grant set and the totals row: two rows for 50 customers' debits.
    assert len(rows) == 2 and all(r == (3, 750_000) for r in rows)
    # The engine remembers the set's headroom under the set's digest, so the next answer
    # over it is checked in O(1) (a closure once stored it under the last group's key).
    [key] = node.engine._headroom._entries
    assert isinstance(key, str) and len(key) >= 32
    # Every customer's grant shows the exact spend, derived from the journal.
    assert {_epsilon_spent(node, w, g) for w, g in zip(node.wallets, ids, strict=True)} == {0.75}


def test_two_engines_never_overspend_through_overlapping_sets(tmp_path: Path,
                                                              bank_rows: list[dict]) -> None:
    node = in_process_node(tmp_path, bank_rows, "journal-two")
    requester = Identity.generate()
    small = _grant(node, requester, node.wallets[0], dp_epsilon=1.0)
    for wallet in node.wallets[1:]:
        _grant(node, requester, wallet)
    # A second worker process: same vault, its own headroom cache.
    other = QueryEngine(node.vault, node.home.datamap(), node.home.identity.did,
                        node.engine.settings)
    node.engine.run({**QUERY, "epsilon": 0.4}, requester.did)  # every grant: 0.4 spent
    # The race, step by step: this engine reads a second 0.4 answer over the same set (the
    # small grant has 0.6 left, so it is in), then the other worker debits the small grant
    # alone (another grant set) by 0.5, then this engine commits what it read.
    now = datetime.now(UTC)
    query = query_from_dict({**QUERY, "epsilon": 0.4})
    dataset, columns, scopes = node.engine._validate(query)
    plan = node.engine._read(query, dataset, columns, scopes, requester.did, now)
    assert small in [g.grant_id for g in plan.used_grants]
    other.run({**QUERY, "epsilon": 0.5, "grant_ids": [small]}, requester.did)
    # Its cached headroom for the set was 1.0 before its first 0.4; counting only its own
    # set's debits it would let this 0.4 through (1.3 spent). It must see that 0.9 was
    # journalled since, read the exact spend and send the query back to be read again.
    with pytest.raises(_Stale):
        node.vault.commit(lambda conn, batch: node.engine._commit(
            conn, batch, plan, query, requester.did, now, None))
    node.engine.run({**QUERY, "epsilon": 0.4}, requester.did)  # read again: left out
    assert _epsilon_spent(node, node.wallets[0], small) == 0.9
    with node.vault.connection() as conn:
        [(left_out,)] = conn.execute("SELECT left_out_set FROM access_log ORDER BY seq DESC "
                                     "LIMIT 1").fetchall()
    assert left_out is not None  # named in the event: its customer sees why
    # 0.1 still fits exactly (integer micro-epsilon), 0.05 more does not.
    other.run({**QUERY, "epsilon": 0.1, "grant_ids": [small]}, requester.did)
    assert _epsilon_spent(node, node.wallets[0], small) == 1.0
