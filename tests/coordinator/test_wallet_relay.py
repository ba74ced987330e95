"""The customer's wallet through the coordinator, on real processes (a coordinator, a node
registered with it, ``consent-wallet`` in-process): ``coordinator set``; a revocation whose
node is down is handed to the coordinator (exit 3, the reply naming the node not reached yet)
and reaches the node when it is back, 'sync' then getting the node's signed ack through the
coordinator; a node whose public address the wallet cannot reach gets the revocation relayed
at once, with its signed receipt checked; and an erasure request
goes through the coordinator, sealed, the proof the node's own."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent_node.client import NodeClient
from consent.identity import Identity
from protos.tls import create_ca
from protos.transport import free_port
from tests.coordinator.conftest import (
    coord_cli,
    set_node_config,
    wallet_network,
)
from tests.wallet.wallet_helpers import PASSPHRASE, WalletCLI, assert_clean_error


def _pending(home: Path) -> int:
    status = coord_cli("status", "--home", str(home), "--json").stdout
    return int(json.loads(status)["pending_relays"])


def test_the_wallet_revokes_and_erases_through_the_coordinator(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENT_WALLET_PASSPHRASE", PASSPHRASE)
    with wallet_network(tmp_path) as network:
        coordinator, coordinator_ca = network.coordinator, network.coordinator_ca
        node, wallet = network.node, network.wallet
        crm = Identity.generate()
        first, second = wallet.grant(node.address, crm.did), wallet.grant(node.address, crm.did)
        address = node.address  # the node's public address, as the wallet knows it

        assert_clean_error(wallet("coordinator", "show"), "no coordinator is set")
        shown = json.loads(wallet.ok("coordinator", "set", coordinator.address, "--ca",
                                     str(coordinator_ca), "--json").output)
        assert shown == {"coordinator": coordinator.address, "nodes": 1,
                         "known_nodes": [address]}

        # The node is down: the coordinator keeps the revocation; exit 3 names the node.
        node.stop()
        relayed = wallet("revoke", first, "--json")
        assert relayed.exit_code == 3, relayed.output
        document = json.loads(relayed.output[:relayed.output.rindex("}") + 1])
        assert document["confirmed"] is False and document["revoked_at"] is None
        assert document["relay"]["pending"] == [node.did]
        assert document["relay"]["delivered"] == []
        assert "NOT yet in effect" in relayed.output
        assert _pending(coordinator.home) == 1
        again = wallet("sync", "--json")  # the node still down: no second relay
        assert again.exit_code == 3 and "since relay" in again.output
        assert _pending(coordinator.home) == 1

        # Back, on a public port the wallet does not know (its old one is out of reach):
        # only the coordinator can reach it, on the node's coordinator port.
        node.port = free_port()
        node.address = f"127.0.0.1:{node.port}"
        set_node_config(node.home, listen=node.address)
        node.start()
        deadline = time.monotonic() + 30
        while _pending(coordinator.home):
            assert time.monotonic() < deadline, "the relay never reached the node"
            time.sleep(0.3)
        with NodeClient(node.address, node.ca_pem, Identity.generate()) as client:
            assert client.node_info().did == node.did
        # The wallet learns it through the coordinator (the node's signed ack, checked).
        synced = json.loads(wallet.ok("sync", "--json").output)
        assert synced["delivered_revocations"] == [first]
        assert _pending(coordinator.home) == 0

        # The wallet cannot reach the node: the relay delivers at once, receipt checked.
        done = json.loads(wallet.ok("revoke", second, "--json").output)
        assert done["confirmed"] is True and done["relay"]["delivered"] == [node.did]
        assert "relayed by the coordinator" in done["message"]
        statuses = {g["id"]: g["status"] for g in json.loads(
            wallet.ok("grants", "--offline", "--json").output)}
        assert statuses == {first: "revoked", second: "revoked"}

        # An erasure request through the coordinator: sealed, the node's proof verified.
        erased = json.loads(wallet.ok("erase", "--node", address, "--yes", "--json").output)
        assert erased["via_coordinator"] == coordinator.address
        assert erased["proof"]["node"] == node.did
        assert sum(int(loc["rows"]) for loc in erased["proof"]["locations"]) >= 1


def test_bad_coordinator_input_is_one_sentence_and_saves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENT_WALLET_PASSPHRASE", PASSPHRASE)
    wallet = WalletCLI(tmp_path / "wallet")
    wallet.ok("init")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(create_ca("nobody's coordinator CA").cert_pem)
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    assert_clean_error(wallet("coordinator", "set", closed, "--ca", str(ca)),
                       f"the coordinator at {closed} is unreachable", exit_code=1)
    assert_clean_error(wallet("coordinator", "show"), "no coordinator is set")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    assert_clean_error(wallet("coordinator", "set", closed, "--ca", str(not_pem)), exit_code=1)
    assert_clean_error(wallet("revoke", "urn:uuid:x", "--coordinator-ca", str(ca)),
                       "--coordinator-ca goes with --via-coordinator", exit_code=2)
    assert_clean_error(wallet("revoke", "urn:uuid:x", "--via-coordinator", closed),
                       "pass --coordinator-ca FILE once", exit_code=1)
