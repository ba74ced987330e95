"""An access head's summary (ledger field ``accesses``): per requester, purpose, scopes and
outcome, how many events the head covers, so that an audit report can say who asked what and
what came of it. Organisations' DIDs and vocabulary words only: never a customer's DID, an
unknown caller's DID or a purpose outside the vocabulary."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_node import accesslog
from agent_node.errors import AgentNodeError
from consent.grants import issue_grant
from consent.identity import Identity
from ledger.events import MAX_ACCESS_ROWS, MAX_EVENT_BYTES, encode_event
from tests.agent_node.conftest import in_process_node

PURPOSE = "quote-generation"
QUERY = {"dataset": "contacts", "purpose": PURPOSE, "measures": ["count"]}


def _refused(node: Any, query: dict[str, Any], did: str) -> None:
    with pytest.raises(AgentNodeError):
        node.engine.run(query, did)


def test_the_head_says_who_asked_what_and_what_came_of_it(
        tmp_path: Path, bank_rows: list[dict[str, Any]]) -> None:
    node = in_process_node(tmp_path, bank_rows, "head-summary")
    crm, stranger = Identity.generate(), Identity.generate()
    for wallet in node.wallets[:12]:
        node.store.submit(issue_grant(wallet, requester=crm.did, nodes=[node.home.identity.did],
                                      purpose=PURPOSE, scopes=["transaction"],
                                      ttl=timedelta(hours=2)))
    node.engine.run(QUERY, crm.did)
    node.engine.run(QUERY, crm.did)
    _refused(node, {**QUERY, "purpose": "renewal-warning"}, crm.did)  # no grant for it
    _refused(node, QUERY, stranger.did)  # nobody granted this caller anything
    _refused(node, {**QUERY, "purpose": "Alice's private notes"}, crm.did)  # not a purpose
    with node.vault.connection() as conn:
        event = accesslog.head_event(conn, node.home.identity.did)
    assert event is not None
    encode_event(event)  # a valid ledger entry under 16 KiB
    rows = {(r["outcome"], r.get("reason")): r for r in event["accesses"]}
    assert rows[("answered", None)] == {"outcome": "answered", "count": 2, "requester": crm.did,
                                        "purpose": PURPOSE, "scopes": ["transaction"]}
    assert rows[("refused", "no-grant")]["count"] == 1
    refusals = [r for r in event["accesses"] if r["outcome"] == "refused"]
    assert sum(r["count"] for r in refusals) == 3
    # The stranger's DID and the free text are never recorded; customers' DIDs never are.
    text = json.dumps(event)
    assert stranger.did not in text and "private" not in text
    assert not any(w.did in text for w in node.wallets)
    assert {r.get("purpose") for r in refusals} <= {PURPOSE, "renewal-warning", None}

    # Anchored and reported: the officer's report shows the same, per requester and outcome.
    from ledger.home import init_home, open_log
    from ledger.report import render, select

    init_home(tmp_path / "ledger", origin="head-summary.test/log", passphrase="p" * 12)
    with open_log(tmp_path / "ledger", "p" * 12) as log:
        [receipt] = log.append([event])
    html = render(select([(receipt, 1)]), title="t", origin="o", selection="all")
    assert 'data-outcome="answered">2<' in html and 'data-outcome="refused">3<' in html
    assert "<li>no-grant: 2</li>" in html and "<li>unknown-purpose: 1</li>" in html
    assert f'title="{crm.did}"' in html


def test_nothing_released_and_many_kinds_keep_exact_totals(
        tmp_path: Path, bank_rows: list[dict[str, Any]]) -> None:
    node = in_process_node(tmp_path, bank_rows, "head-rows")
    with node.vault.transaction() as conn:
        accesslog.append(conn, {"time": "2026-01-01T00:00:00Z", "requester": "-",
                                "purpose": PURPOSE, "outcome": "answered", "released": False},
                         [], [])
        for n in range(MAX_ACCESS_ROWS + 5):  # more kinds than a head may name
            accesslog.append(conn, {"time": "2026-01-01T00:00:00Z", "outcome": "refused",
                                    "reason": f"reason-{n}"}, [], [])
    with node.vault.connection() as conn:
        event = accesslog.head_event(conn, node.home.identity.did)
    assert event is not None and len(encode_event(event)) <= MAX_EVENT_BYTES
    rows = event["accesses"]
    assert len(rows) == MAX_ACCESS_ROWS
    assert {"outcome": "nothing-released", "count": 1, "purpose": PURPOSE} in rows
    assert sum(r["count"] for r in rows if r["outcome"] == "refused") == MAX_ACCESS_ROWS + 5
