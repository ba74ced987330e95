"""Attack (H9): a malicious coordinator claims a relayed revocation was delivered when it was
not. The coordinator is played by a TLS proxy holding the real coordinator's key and
certificate (so the wallet's pinned CA accepts it) in front of the real coordinator; the
node and the wallet are real (``sov-node serve``, ``consent-wallet`` in-process). The first
revocation passes through untouched and the proxy keeps the node's genuine sealed receipt;
then, for the next grant, it forwards nothing and answers "delivered" with that old receipt,
or with no receipt at all. The wallet must not record either grant as revoked on its word:
the receipt is bound to the request it answers (nonce) and signed by the node."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest

from consent.identity import Identity
from protos.sovereign.v1 import coordinator_pb2 as pb
from protos.transport import free_port, secure_channel
from tests.coordinator.conftest import (
    set_node_config,
    wallet_network,
)
from tests.wallet.wallet_helpers import PASSPHRASE

SERVICE = pb.DESCRIPTOR.services_by_name["Coordinator"]


class LyingCoordinator:
    """Forwards every Coordinator call as bytes to the real one, except RelayRevocation once
    ``lie`` is set: then it forwards nothing and claims delivery with ``lie``'s envelope."""

    def __init__(self, upstream: str, ca_pem: bytes, tls: Path) -> None:
        self.channel = secure_channel(upstream, ca_pem)
        self.captured: bytes | None = None  # the node's genuine receipt of a real relay
        self.lie: Callable[[], bytes] | None = None
        self.forwarded: list[str] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {m.name: grpc.unary_unary_rpc_method_handler(self._handler(m.name))
                    for m in SERVICE.methods}
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)])
        credentials = grpc.ssl_server_credentials(
            [((tls / "server.key").read_bytes(), (tls / "server.pem").read_bytes())])
        self.address = f"127.0.0.1:{self.server.add_secure_port('127.0.0.1:0', credentials)}"
        self.server.start()

    def _handler(self, name: str) -> Callable[[bytes, Any], bytes]:
        call = self.channel.unary_unary(f"/{SERVICE.full_name}/{name}")

        def forward(request: bytes, context: Any) -> bytes:
            if name == "RelayRevocation" and self.lie is not None:
                asked = pb.RelayRevocationRequest.FromString(request)
                return pb.RelayRevocationResponse(
                    version=asked.version, relay_id=f"urn:uuid:{uuid.uuid4()}",
                    results=[pb.RelayResult(node_did=t.node_did, delivered=True,
                                            state="delivered", envelope=self.lie())
                             for t in asked.targets]).SerializeToString()
            self.forwarded.append(name)
            reply: bytes = call(request, timeout=60)
            if name == "RelayRevocation":
                for result in pb.RelayRevocationResponse.FromString(reply).results:
                    if result.state == "delivered":
                        self.captured = bytes(result.envelope)
            return reply

        return forward

    def stop(self) -> None:
        self.server.stop(None)
        self.channel.close()


def test_a_coordinator_claiming_a_delivery_it_did_not_make_is_not_believed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENT_WALLET_PASSPHRASE", PASSPHRASE)
    with wallet_network(tmp_path) as network, ExitStack() as cleanup:
        coordinator, coordinator_ca = network.coordinator, network.coordinator_ca
        node, wallet = network.node, network.wallet
        crm = Identity.generate()
        first, second, third = (wallet.grant(node.address, crm.did) for _ in range(3))
        proxy = LyingCoordinator(coordinator.address, coordinator.ca_pem,
                                 coordinator.home / "tls")
        cleanup.callback(proxy.stop)  # before the network's node and coordinator stop
        wallet.ok("coordinator", "set", proxy.address, "--ca", str(coordinator_ca))

        # The node moves to a port the wallet does not know: only the coordinator reaches it.
        node.stop()
        node.port = free_port()
        node.address = f"127.0.0.1:{node.port}"
        set_node_config(node.home, listen=node.address)
        node.start()
        time.sleep(2)  # the coordinator's health check (every 0.3 s) sees the node up again

        honest = json.loads(wallet.ok("revoke", first, "--json").output)
        assert honest["confirmed"] is True and proxy.captured  # the genuine receipt, kept

        for grant, lie in ((second, lambda: proxy.captured or b""), (third, lambda: b"")):
            proxy.lie = lie
            forwarded = len(proxy.forwarded)
            claimed = wallet("revoke", grant, "--json")
            assert claimed.exit_code != 0, claimed.output  # not confirmed on its word
            assert "RelayRevocation" not in proxy.forwarded[forwarded:]  # never delivered
            assert "Traceback" not in claimed.output
        statuses = {g["id"]: g["status"] for g in json.loads(
            wallet.ok("grants", "--offline", "--json").output)}
        assert statuses[first] == "revoked"
        assert statuses[second] != "revoked" and statuses[third] != "revoked", statuses
