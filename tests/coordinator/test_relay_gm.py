"""Revocation relay in the gm profile (SM2-authenticated SM4-GCM envelopes), on a real
coordinator process and a real gm node process: a gm wallet's revocation is sealed in a
session of its own, delivered at once when the node is up (the node's SM2-signed receipt
verified by the wallet), kept while the node is down and delivered after the node restarted
(its session cache empty), and a gm envelope sealed inside a live session is refused by the
coordinator before anything is kept."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from consent.grants import issue_grant, issue_revocation
from consent.identity import Identity
from consent.integrity import verify_document
from protos.sovereign.v1 import coordinator_pb2 as pb
from protos.sovereign.v1 import coordinator_pb2_grpc as pb_grpc
from protos.sovereign.v1 import node_pb2, node_pb2_grpc
from protos.transport import free_port, secure_channel
from tests.agent_node.conftest import (
    DATASET_TOML,
    NodeProcess,
    bank_rows,  # noqa: F401 (a fixture used here)
    bind_all,
    run_cli,
    serve,
    stop,
    write_sqlite,
)
from tests.coordinator.conftest import (
    CoordinatorProcess,
    coord_cli,
    init_coordinator,
    register,
    serve_coordinator,
    set_node_config,
    stop_process,
)

WALLETS = 6


@pytest.fixture(scope="module")
def gm_network(tmp_path_factory: pytest.TempPathFactory,
               bank_rows: list[dict[str, Any]],  # noqa: F811
               ) -> Iterator[tuple[CoordinatorProcess, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("gm-relay")
    coordinator = serve_coordinator(init_coordinator(tmp / "coordinator",
                                                     health_interval_seconds=0.3,
                                                     relay_retry_seconds=0.3))
    node: NodeProcess | None = None
    try:
        write_sqlite(tmp / "crm.db", bank_rows[:60])
        home = tmp / "node"
        run_cli("sov-node", "init", "--home", str(home), "--name", "gm-node", "--region",
                "cn-test", "--profile", "gm")
        (home / "datamap.toml").write_text(
            f'[sources.crm]\nkind = "sqlite"\npath = "{tmp / "crm.db"}"\n' + DATASET_TOML)
        run_cli("sov-node", "sync", "--home", str(home))
        set_node_config(home, coordinator_listen=f"127.0.0.1:{free_port()}",
                        coordinator_ca=str(coordinator.home / "tls" / "ca.pem"))
        wallets = [Identity.generate("gm") for _ in range(WALLETS)]
        bind_all(home, wallets)
        node = serve(home)
        node.wallets = wallets
        register(home, coordinator)
        yield coordinator, node
    finally:
        if node is not None and node.process.poll() is None:
            stop(node)
        stop_process(coordinator.process)


def _grant(node: NodeProcess, wallet: Identity) -> str:
    credential = issue_grant(wallet, requester=Identity.generate().did, nodes=[node.did],
                             purpose="marketing-analytics", scopes=["transaction"],
                             ttl=timedelta(hours=24))
    with node.client(wallet) as client:
        return client.submit_grant(credential).grant_id


def _status(node: NodeProcess, wallet: Identity, grant_id: str) -> str:
    with node.client(wallet) as client:
        return client.grant_status([grant_id])[0].status


def _pending(coordinator: CoordinatorProcess) -> int:
    status = coord_cli("status", "--home", str(coordinator.home), "--json").stdout
    return int(json.loads(status)["pending_relays"])


def test_a_gm_revocation_is_relayed_now_and_after_the_node_restarts(
        gm_network: tuple[CoordinatorProcess, NodeProcess]) -> None:
    coordinator, node = gm_network
    wallet, later = node.wallets[0], node.wallets[1]
    now_id, later_id = _grant(node, wallet), _grant(node, later)

    with coordinator.client() as network:
        (listed,) = network.nodes()
        assert listed.registration.profile == "gm"
        relay_id, (result,) = network.relay_revocation(
            [network.client_for(listed, wallet)], issue_revocation(wallet, now_id))
    assert relay_id.startswith("urn:uuid:") and result.state == "delivered", result.message
    assert result.receipt is not None and result.receipt["body"]["grant_id"] == now_id
    # The receipt came back sealed in the relay's own session and carries the node's SM2 proof.
    assert verify_document(result.receipt, require_sm2=True) == node.did
    assert _status(node, wallet, now_id) == "revoked"

    stop(node)  # down when the second customer revokes: the coordinator keeps the envelope
    with coordinator.client() as network:
        (listed,) = network.nodes()
        _, (result,) = network.relay_revocation(
            [network.client_for(listed, later)], issue_revocation(later, later_id))
    assert result.state == "pending" and result.message
    assert _pending(coordinator) == 1
    # Back with an empty session cache: the kept opening still opens, whatever its age.
    restarted = serve(node.home)
    restarted.wallets, node.process, node.address = node.wallets, restarted.process, \
        restarted.address
    deadline = time.monotonic() + 30
    while _pending(coordinator):
        assert time.monotonic() < deadline, "the gm relay never reached the restarted node"
        time.sleep(0.3)
    assert _status(node, later, later_id) == "revoked"


def test_a_relayed_gm_envelope_is_opened_again_and_its_method_is_checked(
        gm_network: tuple[CoordinatorProcess, NodeProcess]) -> None:
    """RelayRevoke opens the same gm opening twice (a retry after a lost reply), and only for
    a Revoke: a relayed opening of any other method is refused, so the waived replay checks
    cannot replay a query or a grant."""
    _, node = gm_network
    wallet = node.wallets[2]
    grant_id = _grant(node, wallet)
    with node.client(wallet) as client:
        revoke = client.sealed_for_relay("Revoke", {"revocation": issue_revocation(
            wallet, grant_id)})
        status = client.sealed_for_relay("GrantStatus", {"grant_ids": [grant_id]})
    channel = secure_channel(node.address, node.ca_pem)
    agent = node_pb2_grpc.AgentNodeStub(channel)
    try:
        for _ in range(2):
            agent.RelayRevoke(node_pb2.SealedRequest(version=1, envelope=revoke[0],
                                                     key_binding=revoke[2]), timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            agent.RelayRevoke(node_pb2.SealedRequest(version=1, envelope=status[0],
                                                     key_binding=status[2]), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "another method" in (refused.value.details() or "")
    finally:
        channel.close()
    assert _status(node, wallet, grant_id) == "revoked"


def test_a_gm_envelope_inside_a_session_is_not_kept(
        gm_network: tuple[CoordinatorProcess, NodeProcess], tmp_path: Path) -> None:
    coordinator, node = gm_network
    wallet = node.wallets[3]
    grant_id = _grant(node, wallet)
    with node.client(wallet) as client:
        client.grant_status([grant_id])  # the session is established: kind 2 from here on
        envelope, _ = client.sealed_request("Revoke", {"revocation": issue_revocation(
            wallet, grant_id)})
    assert envelope[2] == 2
    channel = secure_channel(coordinator.address, coordinator.ca_pem)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.CoordinatorStub(channel).RelayRevocation(pb.RelayRevocationRequest(
                version=1, targets=[pb.RouteTarget(node_did=node.did, envelope=envelope)]),
                timeout=10)
    finally:
        channel.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must open a session of its own" in (refused.value.details() or "")
    assert _pending(coordinator) == 0  # nothing kept
    assert _status(node, wallet, grant_id) == "active"
