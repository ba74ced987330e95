"""The node's durable queue of access-log heads for the ledger (agent_node.accesslog), over a
real SQLite vault, and the subject salt a wallet sends with its grant (real node process)."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import tomli_w

from agent_node import accesslog
from agent_node.client import NodeError
from agent_node.errors import ConfigError
from agent_node.home import load_config
from agent_node.vault import Vault
from agent_node.vaultcrypto import VaultKeys
from consent.grants import issue_grant
from consent.identity import Identity
from ledger.events import subject_commitment, validate_event
from tests.agent_node.conftest import NodeProcess, run_cli

NODE_DID = Identity.generate().did
NOW = "2026-01-01T00:00:00.000000Z"


def _append(vault: Vault, sids: list[int], grant_ids: list[str]) -> int:
    body = {"requester": NODE_DID, "purpose": "quote-generation", "time": NOW,
            "grant_ids": sorted(grant_ids)}  # as agent_node.engine writes it
    with vault.transaction() as conn:
        return accesslog.append(conn, body, sids, grant_ids)[0]


def _grant_row(vault: Vault, grant_id: str, digest: str) -> None:
    with vault.transaction() as conn:
        conn.execute("INSERT INTO grants (grant_id, subject, requester, purpose, scopes, "
                     "not_before, expires, digest, credential, received_at) "
                     "VALUES (?, 's', 'r', 'p', '[]', 0, 0, ?, '{}', ?)", (grant_id, digest, NOW))


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault(tmp_path / "vault.sqlite", VaultKeys(os.urandom(32)))


def test_each_head_is_queued_once_with_commitments_and_digests(vault: Vault) -> None:
    alice = Identity.generate().did
    vault.bind(["C1"], alice)
    with vault.connection() as conn:
        [sid] = vault.sids_for_did(conn, alice)
    salt = os.urandom(32)
    with vault.transaction() as conn:
        accesslog.remember_salt(conn, alice, salt.hex(), NOW)
    _grant_row(vault, "urn:uuid:g1", "ab" * 32)
    with vault.transaction() as conn:
        assert accesslog.enqueue_head(conn, NODE_DID) is None  # an empty chain has no head
    _append(vault, [sid], ["urn:uuid:g1"])
    _append(vault, [], [])
    with vault.transaction() as conn:
        assert accesslog.enqueue_head(conn, NODE_DID) == 2
        assert accesslog.enqueue_head(conn, NODE_DID) is None  # the same head, not twice
        [queued] = accesslog.pending_heads(conn)
        current = accesslog.head(conn)
    validate_event(queued.event)
    assert queued.event["sequence"] == 2 and queued.event["head"] == current["hash"]
    assert queued.event["subject_commitments"] == [subject_commitment(alice, salt)]
    assert queued.event["grant_digests"] == ["ab" * 32]
    assert alice not in json.dumps(queued.event)

    # The next head lists only what the events after the previous head used.
    _append(vault, [], [])
    with vault.transaction() as conn:
        assert accesslog.enqueue_head(conn, NODE_DID) == 3
        later = accesslog.pending_heads(conn)[1].event
    assert "subject_commitments" not in later and "grant_digests" not in later


def test_too_many_subjects_are_left_out_of_the_head(vault: Vault) -> None:
    sids = []
    for i in range(accesslog.MAX_LISTED + 1):
        did = Identity.generate().did
        vault.bind([f"C{i}"], did)
        with vault.transaction() as tx:
            sids.extend(vault.sids_for_did(tx, did))
            accesslog.remember_salt(tx, did, os.urandom(32).hex(), NOW)
    _append(vault, sids, [])
    with vault.transaction() as tx:
        accesslog.enqueue_head(tx, NODE_DID)
        [queued] = accesslog.pending_heads(tx)
    validate_event(queued.event)  # still a valid event within the ledger's 16 KiB limit
    assert "subject_commitments" not in queued.event


def test_receipts_cover_the_events_at_or_before_their_head(vault: Vault) -> None:
    for _ in range(5):
        _append(vault, [], [])
        with vault.transaction() as conn:
            accesslog.enqueue_head(conn, NODE_DID)
    with vault.transaction() as conn:
        for seq in (2, 4):
            accesslog.store_receipt(conn, seq, {"for": seq}, NOW)
        accesslog.mark_attempt_failed(conn, [5], "ledger Append failed (UNAVAILABLE)")
        assert accesslog.queue_counts(conn) == (2, 3)
        assert [h.sequence for h in accesslog.pending_heads(conn)] == [1, 3, 5]
        covering = accesslog.anchors_covering(conn, [1, 2, 3, 5])
    # 1 and 2 -> head 2, 3 -> head 4, 5 -> not anchored yet.
    assert [(a["sequence"], a["receipt"]) for a in covering] == [(2, {"for": 2}), (4, {"for": 4})]
    with vault.transaction() as conn:
        accesslog.store_receipt(conn, 2, {"replaced": True}, NOW)  # a kept receipt is final
        assert accesslog.anchored_heads(conn)[0].receipt == {"for": 2}


def test_a_node_without_ledger_tables_answers_no_anchors(vault: Vault) -> None:
    with vault.connection() as conn:
        assert accesslog.anchors_covering(conn, [1]) == []
        assert accesslog.pending_heads(conn) == []
        assert accesslog.queue_counts(conn) == (0, 0)


@pytest.mark.parametrize("salt", ["zz" * 32, "ab" * 31, 42], ids=["not-hex", "short", "number"])
def test_a_malformed_subject_salt_is_refused_and_changes_nothing(
    sqlite_node: NodeProcess, salt: Any
) -> None:
    wallet = sqlite_node.wallets[0]
    credential = issue_grant(wallet, requester=Identity.generate().did, nodes=[sqlite_node.did],
                             purpose="quote-generation", scopes=["transaction"],
                             ttl=timedelta(hours=1))
    with sqlite_node.client(wallet) as client:
        with pytest.raises(NodeError) as refused:
            client.call("SubmitGrant", {"credential": credential, "subject_salt": salt})
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "subject_salt must be 64 hex characters" in str(refused.value)
        assert credential["id"] not in [g.grant_id for g in client.grant_status()]
        # The same grant with a good salt is accepted.
        assert client.submit_grant(credential, subject_salt=os.urandom(32).hex()).grant_id \
            == credential["id"]


def test_log_push_without_a_ledger_says_how_to_configure_one(sqlite_node: NodeProcess) -> None:
    result = run_cli("sov-node", "log", "push", "--home", str(sqlite_node.home), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no ledger is configured: set ledger_address and ledger_ca in node.toml" \
        in result.stderr


@pytest.mark.parametrize("settings, message", [
    ({"ledger_push_seconds": 0.0}, "'ledger_push_seconds': must be 0.1 to 86400"),
    ({"ledger_address": "127.0.0.1:1"}, "'ledger_ca': set it to the ledger's CA"),
    ({"ledger_push_seconds": "often"}, "'ledger_push_seconds' must be a float"),
])
def test_bad_ledger_settings_are_refused(tmp_path: Path, settings: dict[str, Any],
                                         message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(tomli_w.dumps({"node": settings}))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert message in str(refused.value)


@pytest.mark.parametrize("document, message", [
    ({"ledger_address": "127.0.0.1:1"}, "'ledger_address' is outside the [node] table"),
    ({"node": {}, "metrics": {"port": 1}}, "'metrics' is outside the [node] table"),
    ({"node": "k=5"}, "'node' must be a table"),
])
def test_settings_outside_the_node_table_are_refused(tmp_path: Path, document: dict[str, Any],
                                                     message: str) -> None:
    # A stray setting would otherwise be ignored silently: the operator believes a ledger is
    # configured while nothing is ever anchored.
    path = tmp_path / "node.toml"
    path.write_text(tomli_w.dumps(document))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert message in str(refused.value)
