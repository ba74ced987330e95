"""Attack (H9): a revocation racing queries now that they write different database files
(the grants in the vault, the access log and spend in activity.sqlite, commit 2a85161).
Two requester threads ask as fast as they can while the customers revoke one by one; once a
revocation has returned, no access event written after it may have used that grant (the
design: "takes effect at the node before the next query is answered"). The order is read
from the access log itself: the highest event number right after the revocation returned
bounds what may still have been in flight."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from agent_node import accesslog
from agent_node.engine import EngineSettings
from consent.grants import issue_grant, issue_revocation
from consent.identity import Identity
from tests.agent_node.conftest import in_process_node

PURPOSE = "marketing-analytics"
QUERY = {"dataset": "contacts", "purpose": PURPOSE, "measures": ["count"], "epsilon": 0.05}
REVOKED = 12


def test_no_event_after_a_revocation_returned_uses_the_revoked_grant(
        tmp_path: Path, bank_rows: list[dict[str, Any]]) -> None:
    parts = in_process_node(tmp_path, bank_rows, "revocation-race",
                            EngineSettings(grant_budget=1000.0))
    requester = Identity.generate()
    node = parts.home.identity.did
    wallets = parts.wallets[:REVOKED + 8]  # eight keep their grant: questions keep answering
    grants = {w.did: parts.store.submit(issue_grant(
        w, requester=requester.did, nodes=[node], purpose=PURPOSE, scopes=["transaction"],
        ttl=timedelta(hours=24)))[0].id for w in wallets}
    stop = threading.Event()
    answered: list[int] = []
    failures: list[BaseException] = []

    def ask() -> None:
        try:
            while not stop.is_set():
                answer = parts.engine.run(QUERY, requester.did)
                answered.append(answer["event_seq"])
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    askers = [threading.Thread(target=ask) for _ in range(2)]
    for t in askers:
        t.start()
    bound: dict[str, int] = {}  # grant id -> last event seq when its revocation returned
    try:
        for wallet in wallets[:REVOKED]:
            while len(answered) < 3:  # queries are in flight before each revocation
                assert not failures, failures
            answered.clear()
            parts.store.revoke(issue_revocation(wallet, grants[wallet.did]))
            with parts.vault.connection() as conn:
                bound[grants[wallet.did]] = accesslog.head(conn)["seq"]
    finally:
        stop.set()
        for t in askers:
            t.join(60)
    assert not failures, failures
    with parts.vault.connection() as conn:
        events = accesslog.operator_view(conn, limit=100_000)
    late = [(e["seq"], g) for e in events for g in e["grant_ids"]
            if g in bound and e["seq"] > bound[g]]
    assert late == [], f"answers after a revocation returned used the revoked grant: {late}"
    # The check had something to check: questions answered after each revocation.
    assert all(any(e["seq"] > s for e in events) for s in bound.values())
    used = {g for e in events for g in e["grant_ids"]}
    assert set(bound) <= used  # each revoked grant was used before its revocation
