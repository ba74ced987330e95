"""A node operator cannot hide an access from the customer (issue 11, item 2), on real
processes (node, ledger, wallet): the wallet finds the anchored heads that name its salted
commitment by asking the ledger, never the node, and checks that the node's listing shows
exactly the events each head anchored as the customer's. The two attacks of the issue, each
seen by a wallet with no cached copy of its events:

- rows deleted from the stored member sets (the Merkle roots left as they were), so the
  listing no longer finds the events;
- an event dropped from the tail of the log after its head was anchored.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent_node.client import NodeClient, NodeError
from consent.identity import Identity
from tests.wallet.conftest import LedgerProcess, NodeProcess
from tests.wallet.test_wallet_ledger import configure_ledger, sov
from tests.wallet.wallet_helpers import WalletCLI

QUERY = {"dataset": "orders", "purpose": "quote-generation", "measures": ["count"],
         "group_by": []}


def _ask(node: NodeProcess, crm: Identity, grant_id: str) -> None:
    """One question naming the customer's grant: an access event either way."""
    try:
        with NodeClient(node.address, node.ca_pem, crm) as client:
            client.query({**QUERY, "grant_ids": [grant_id]})
    except NodeError:
        pass  # refused (small group): still an event under the grant


def _push(node: NodeProcess) -> None:
    pushed = sov("sov-node", "log", "push", "--home", str(node.home))
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr


def _access_log(wallet: WalletCLI) -> tuple[int, dict[str, Any], str]:
    """(exit code, the --json document, the human output), with no cached events."""
    with sqlite3.connect(wallet.home / "wallet.db") as db:
        db.execute("DELETE FROM access_events")  # a wallet with no cached copy
    result = wallet("access-log", "--json")
    document = json.loads(result.output[:result.output.rindex("}") + 1])
    with sqlite3.connect(wallet.home / "wallet.db") as db:
        db.execute("DELETE FROM access_events")
    return result.exit_code, document, wallet("access-log").output


@pytest.fixture
def story(initialised: WalletCLI, node: NodeProcess, ledger: LedgerProcess
          ) -> tuple[WalletCLI, NodeProcess, Identity, str, str]:
    """A customer granted; two questions under the grant, anchored by `sov-node log push`."""
    wallet = initialised
    did = json.loads(wallet.ok("whoami", "--json").output)["did"]
    node.bind(did)
    configure_ledger(node, ledger, push_seconds=3600)  # pushes on demand only, here
    wallet.ok("ledger", "set", ledger.address, "--ca", str(ledger.ca_path), "--log-key",
              str(ledger.home / "log-public.json"))
    granted = wallet("grant", "--node", node.address, "--node-ca", str(node.ca_path),
                     "--requester", (crm := Identity.generate()).did, "--purpose",
                     "quote-generation", "--scope", "transaction", "--ttl", "24h", "--json")
    grant_id = json.loads(granted.output[:granted.output.rindex("}") + 1])["grant_id"]
    for _ in range(2):
        _ask(node, crm, grant_id)
    _push(node)
    return wallet, node, crm, grant_id, did


def _vault(node: NodeProcess) -> sqlite3.Connection:
    """The node's vault with its activity database (the access log's tables) attached."""
    db = sqlite3.connect(node.home / "vault.sqlite", timeout=30)
    db.execute("ATTACH DATABASE ? AS activity", (str(node.home / "activity.sqlite"),))
    return db


def test_a_clean_listing_matches_and_unanchored_events_are_counted(story: tuple) -> None:
    wallet, node, crm, grant_id, _ = story
    code, document, text = _access_log(wallet)
    assert code == 0, text
    [check] = document["integrity"].values()
    assert check == {"heads": 1, "not_anchored": 0, "mismatches": []}
    assert "matches the 1 anchored head(s) that name you" in text
    _ask(node, crm, grant_id)
    code, document, text = _access_log(wallet)
    assert code == 0 and document["integrity"][node.address]["not_anchored"] == 1
    assert "1 of your event(s) there are not yet anchored" in text


def test_rows_deleted_from_the_stored_sets_are_detected(story: tuple) -> None:
    wallet, node, _, grant_id, did = story
    with _vault(node) as db:
        [sid] = [r[0] for r in db.execute("SELECT sid FROM bindings WHERE did = ?", (did,))]
        assert db.execute("DELETE FROM access_set_subjects WHERE sid = ?", (sid,)).rowcount
        assert db.execute("DELETE FROM access_set_grants WHERE grant_id = ?",
                          (grant_id,)).rowcount
    code, document, text = _access_log(wallet)
    assert document["events"] == []  # the node's listing looks clean and empty...
    assert code == 1  # ...but the wallet says so, as a finding, not a network error
    [mismatch] = document["integrity"][node.address]["mismatches"]
    assert mismatch["count"] == 2 and (mismatch["first_seq"], mismatch["last_seq"]) == (1, 2)
    assert f"the node at {node.address} hid or changed 2 access(es)" in mismatch["message"]
    assert "error: the node at" in text and "hid or changed 2 access(es) before" in text
    assert "unreachable" not in text.lower()


def test_an_event_dropped_from_the_tail_is_detected(story: tuple) -> None:
    wallet, node, _, _, _ = story
    with _vault(node) as db:
        assert db.execute("DELETE FROM access_log WHERE seq = 2").rowcount == 1
    code, document, text = _access_log(wallet)
    assert [e["seq"] for e in document["events"]] == [1]
    assert code == 1, text
    [mismatch] = document["integrity"][node.address]["mismatches"]
    assert mismatch["count"] == 1 and mismatch["first_seq"] == 2
    assert "its chain now ends at 1, before the head it anchored at 2" in mismatch["message"]
    assert "hid or changed 1 access(es) between" in text


def test_the_ledger_finds_heads_without_the_node(story: tuple, tmp_path: Path) -> None:
    """The heads come from the ledger's index by commitment: with the node's own anchor
    claims stripped from its vault, the check still has its head."""
    wallet, node, _, _, _ = story
    with _vault(node) as db:
        db.execute("DELETE FROM ledger_heads")
    code, document, _ = _access_log(wallet)
    assert code == 0 and document["integrity"][node.address]["heads"] == 1
