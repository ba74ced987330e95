"""The operator's commands over consent: ``sov-node subjects list`` and ``unbind`` (every
binding by subject reference, never a customer key; an unbinding takes effect before the next
answer) and ``sov-node grants list`` (every grant with its state and use)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from consent.grants import issue_grant, issue_revocation
from consent.identity import Identity
from tests.agent_node.conftest import SUBJECTS, THRESHOLD, in_process_node, run_cli

PURPOSE = "quote-generation"
QUERY = {"dataset": "contacts", "purpose": PURPOSE, "measures": ["count"]}


def _cli(home: Any, *args: str, check: bool = True) -> Any:
    return run_cli("sov-node", "subjects", *args, "--home", str(home.path), check=check)


def _last_event(vault: Any) -> dict[str, Any]:
    with vault.connection() as conn:
        return json.loads(conn.execute(
            "SELECT body FROM access_log ORDER BY seq DESC LIMIT 1").fetchone()[0])


def test_list_and_unbind(tmp_path: Path, bank_rows: list[dict[str, Any]]) -> None:
    # Threshold mode: the point below is that an unbinding shows in the very next answer,
    # which the overlap control then withholds.
    node = in_process_node(tmp_path, bank_rows, "subjects", THRESHOLD)
    listed = json.loads(_cli(node.home, "list", "--json").stdout)
    assert len(listed) == SUBJECTS
    assert {b["did"] for b in listed} == {w.did for w in node.wallets}
    human = _cli(node.home, "list").stdout
    assert node.wallets[0].did in human and "C000" not in human  # refs, never customer keys

    requester = Identity.generate()
    for wallet in node.wallets[:12]:
        node.store.submit(issue_grant(wallet, requester=requester.did,
                                      nodes=[node.home.identity.did], purpose=PURPOSE,
                                      scopes=["transaction"], ttl=timedelta(hours=2)))
    assert node.engine.run(QUERY, requester.did)["groups"][0]["values"]["count"] > 0
    assert _last_event(node.vault)["subject_count"] == 12

    out = _cli(node.home, "unbind", "C000", node.wallets[0].did).stdout
    assert "unbound subject" in out and "C000" not in out
    # The next answer uses 11 customers; it differs from the earlier one by a single
    # customer, so the overlap control withholds it (it would reveal that customer's count).
    after = node.engine.run(QUERY, requester.did)
    assert _last_event(node.vault)["subject_count"] == 11
    assert after["groups"] == [] and "nothing was released" in after["note"]
    assert _last_event(node.vault)["released"] is False
    assert len(json.loads(_cli(node.home, "list", "--json").stdout)) == SUBJECTS - 1

    again = _cli(node.home, "unbind", "C000", node.wallets[0].did, check=False)
    assert again.returncode == 1 and "not bound to this DID: nothing was changed" in again.stderr
    assert "Traceback" not in again.stderr and "C000" not in again.stderr
    assert len(json.loads(_cli(node.home, "list", "--json").stdout)) == SUBJECTS - 1


def test_grants_list_shows_state_and_use(tmp_path: Path, bank_rows: list[dict[str, Any]]) -> None:
    node = in_process_node(tmp_path, bank_rows, "grants")
    requester = Identity.generate()
    issued = [node.store.submit(issue_grant(
        wallet, requester=requester.did, nodes=[node.home.identity.did], purpose=PURPOSE,
        scopes=["transaction"], ttl=timedelta(hours=2), max_queries=3))[0].id
        for wallet in node.wallets[:6]]
    node.engine.run(QUERY, requester.did)
    revocation = issue_revocation(node.wallets[0], issued[0])
    node.store.revoke(revocation)

    def listed(*extra: str) -> list[dict[str, Any]]:
        return json.loads(run_cli("sov-node", "grants", "list", "--home", str(node.home.path),
                                  "--json", *extra).stdout)

    everything = listed()
    assert sorted(g["grant_id"] for g in everything) == sorted(issued)
    by_id = {g["grant_id"]: g for g in everything}
    assert by_id[issued[0]]["status"] == "revoked"
    assert by_id[issued[1]]["status"] == "active" and by_id[issued[1]]["queries_used"] == 1
    assert by_id[issued[1]]["subject"] == node.wallets[1].did
    assert [g["grant_id"] for g in listed("--status", "revoked")] == [issued[0]]
    assert len(listed("--status", "active")) == 5 and listed("--status", "expired") == []
    human = run_cli("sov-node", "grants", "list", "--home", str(node.home.path)).stdout
    assert f"{issued[1]}  ACTIVE  {node.wallets[1].did} -> {requester.did}" in human
    assert "1/3 queries" in human
    # dp mode (the node home's default): each grant's privacy budget, the node's default here.
    assert by_id[issued[1]]["epsilon_left"] == 9.0 and by_id[issued[1]]["epsilon_budget"] == 10
    assert "1/3 queries  until " in human and "  epsilon 9/10 left" in human
