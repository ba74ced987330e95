"""Attack (H9): one sealed Query sent many times at once (a network attacker replaying
captured traffic, or a requester after more noisy draws of one question) to a node serving
with two worker processes, whose replay nonces now live in the activity database
(activity.sqlite, commit 2a85161). Sequential replays are refused (test_perf_workers);
here the copies race each other into the read phase of two processes and the same
group-commit batches: exactly one may be answered, and every consenting customer's budget
debited once (real processes, real TLS, real SQLite)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from agent_node import spend
from agent_node.client import NodeClient, NodeError
from agent_node.home import load_home
from agent_node.vault import Vault
from consent.identity import Identity
from tests.agent_node.conftest import (
    PASSPHRASE,
    NodeProcess,
    bind_all,
    grant_all,
    run_cli,
    serve,
    sqlite_home,
    stop,
)

COPIES = 12
QUERY = {"dataset": "contacts", "purpose": "marketing-analytics", "measures": ["count"],
         "epsilon": 0.5}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]
         ) -> Iterator[NodeProcess]:
    home = sqlite_home(tmp_path_factory.mktemp("replay-race"), bank_rows)  # dp mode
    run_cli("sov-node", "sync", "--home", str(home))
    served = serve(home, workers=2)
    served.wallets = [Identity.generate() for _ in range(20)]
    bind_all(home, served.wallets)
    yield served
    stop(served)


def _race(node: NodeProcess, requester: Identity, envelope: bytes, nonce: str
          ) -> tuple[int, list[str]]:
    """Send ``envelope`` COPIES times at once on fresh channels; (answers, refusals)."""
    clients = [NodeClient(node.address, node.ca_pem, requester) for _ in range(COPIES)]
    start = threading.Barrier(COPIES)
    answered: list[int] = []
    refused: list[str] = []

    def one(client: NodeClient) -> None:
        start.wait()
        try:
            client.send("Query", envelope, nonce)
            answered.append(1)
        except NodeError as exc:
            assert exc.code == grpc.StatusCode.UNAUTHENTICATED, str(exc)
            refused.append(str(exc))

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for client in clients:
        client.close()
    return len(answered), refused


def test_copies_of_one_sealed_query_sent_at_once_are_answered_once(node: NodeProcess) -> None:
    requester = Identity.generate()
    grant_ids = grant_all(node, requester, node.wallets)
    with NodeClient(node.address, node.ca_pem, requester) as client:
        envelope, nonce = client.sealed_request("Query", {"query": QUERY})
    answers, refusals = _race(node, requester, envelope, nonce)
    assert answers == 1 and len(refusals) == COPIES - 1, refusals
    assert all("already received" in r or "replay" in r for r in refusals), refusals
    home = load_home(node.home, PASSPHRASE)
    with Vault(home.vault_path, home.keys).connection() as conn:
        used = spend.usage(conn, grant_ids)
    # Debited once: one query's epsilon per grant, not one per copy.
    assert {g: used.get(g) for g in grant_ids} == {g: (1, 500_000) for g in grant_ids}
