"""Attack (H9) on the node's RelayRevoke (the coordinator's relay of a sealed revocation,
which waives the replay window, intl profile; the gm cases are tests/coordinator/
test_relay_gm.py). Whoever reaches the node's port (a coordinator, or anyone who captured
traffic) delivers through it: a requester's sealed Query, the customer's sealed Erase, and a
revocation sealed to another node. None may be acted on: only a Revoke, sealed to this node,
is opened there without the replay check (applying a revocation twice changes nothing)."""

from __future__ import annotations

import grpc
import pytest

from agent_node.client import VERSION
from consent import protocol
from consent.grants import issue_revocation
from consent.identity import Identity
from ledger.erasure import issue_request
from protos.sovereign.v1 import node_pb2
from protos.sovereign.v1.node_pb2_grpc import AgentNodeStub
from protos.transport import secure_channel
from tests.agent_node.conftest import NodeProcess, grant_all

QUERY = {"dataset": "contacts", "purpose": "marketing-analytics", "measures": ["count"]}


def _relay(node: NodeProcess, envelope: bytes) -> grpc.StatusCode:
    channel = secure_channel(node.address, node.ca_pem)
    try:
        AgentNodeStub(channel).RelayRevoke(
            node_pb2.SealedRequest(version=VERSION, envelope=envelope), timeout=30)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    finally:
        channel.close()
    return grpc.StatusCode.OK


def test_relay_revoke_opens_only_a_revocation_sealed_to_this_node(
        sqlite_node: NodeProcess) -> None:
    node = sqlite_node
    customer, requester = node.wallets[0], Identity.generate()
    [grant_id] = grant_all(node, requester, [customer])

    # A requester's sealed Query delivered as a relayed revocation: not answered.
    with node.client(requester) as client:
        envelope, _ = client.sealed_request("Query", {"query": QUERY})
        assert _relay(node, envelope) != grpc.StatusCode.OK

    # The customer's sealed Erase: not carried out (it would erase them outside the replay
    # window, as often as it is delivered).
    with node.client(customer) as client:
        erase, _ = client.sealed_request("Erase", {"request": issue_request(customer,
                                                                            node.did)})
        assert _relay(node, erase) != grpc.StatusCode.OK
        assert [g.status for g in client.grant_status([grant_id])] == ["active"]

    # A revocation sealed to another node, delivered here: not opened.
    revocation = issue_revocation(customer, grant_id)
    message, _ = protocol.request_message("Revoke", {"revocation": revocation})
    elsewhere = protocol.seal_request(message, customer, Identity.generate().did)
    assert _relay(node, elsewhere) != grpc.StatusCode.OK
    with node.client(customer) as client:
        assert [g.status for g in client.grant_status([grant_id])] == ["active"]

    # The control: the same revocation sealed to this node is applied, and applied again.
    sealed = protocol.seal_request(message, customer, node.did)
    assert _relay(node, sealed) == grpc.StatusCode.OK
    assert _relay(node, sealed) == grpc.StatusCode.OK
    with node.client(customer) as client:
        assert [g.status for g in client.grant_status([grant_id])] == ["revoked"]
    with node.client(requester) as client, pytest.raises(Exception, match=r"revoked|no active"):
        client.query(QUERY)
