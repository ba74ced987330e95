"""A requester's or wallet's view of a coordinator's network (sovereign.v1.Coordinator).

Nothing the coordinator says is taken on its word: every node it lists comes with the node's
own signed NodeRegistration (verified here, ``consent.registration``), and every routed
answer is opened and verified exactly as a direct one (``agent_node.client.NodeClient``: the
node's signature, this method, this request's nonce). The coordinator only carries bytes.
A caller may pin the node DIDs it trusts (e.g. the nodes its grants name): any other node
the coordinator lists is then ignored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from agent_node.client import NodeClient, NodeError, NodeInfo, NodeProtocolError, NodeUnreachable
from consent.errors import ConsentError
from consent.identity import Identity
from consent.registration import Registration, RegistrationError, verify_registration
from consent.sm import SM2PublicKey
from protos.sovereign.v1 import coordinator_pb2 as pb
from protos.sovereign.v1 import coordinator_pb2_grpc as pb_grpc
from protos.transport import DEFAULT_MAX_MESSAGE_BYTES, secure_channel

VERSION = 1


class CoordinatorError(NodeError):
    """The coordinator refused a call or could not be reached (``code`` is its status)."""


@dataclass(frozen=True)
class NetworkNode:
    """A registered node as the coordinator lists it; ``registration`` is verified."""

    registration: Registration
    health: str
    last_contact: str
    last_error: str

    @property
    def did(self) -> str:
        return self.registration.did


@dataclass(frozen=True)
class Routed:
    """One node's part of a routed call: the verified reply document, or why there is none.

    ``outcome`` is the coordinator's (answered | refused | unreachable | deadline | offline)
    except that an answer which fails verification becomes ``bad-signature``.
    """

    node_did: str
    outcome: str
    code: str
    message: str
    document: dict[str, Any] | None = None
    elapsed_ms: float = 0.0


@dataclass(frozen=True)
class Relayed:
    """One node's part of a revocation relay; ``receipt`` is the node-signed reply document
    (verified) once ``state`` is ``delivered``."""

    node_did: str
    state: str
    message: str
    receipt: dict[str, Any] | None = None


class RoutedNodeClient(NodeClient):
    """A ``NodeClient`` whose calls travel through the coordinator instead of a direct
    channel. The node's identity comes from its signed registration (not from the
    coordinator); sealing, session handling and reply verification are NodeClient's own."""

    def __init__(self, coordinator: CoordinatorClient, node: NetworkNode, caller: Identity,
                 *, timeout: float = 10.0) -> None:
        super().__init__(node.registration.endpoint, node.registration.tls_ca.encode(), caller,
                         timeout=timeout)
        self.coordinator = coordinator
        self.node = node
        r = node.registration
        self._info = NodeInfo(
            did=r.did, name=r.name, region=r.region, residency=r.residency, profile=r.profile,
            k_threshold=0, max_ttl_hours=0, datasets={k: {"scopes": v}
                                                      for k, v in r.datasets.items()},
            document=r.document,
            sm2_public_key=SM2PublicKey.from_hex(r.sm2_public_key) if r.sm2_public_key else None)

    def node_info(self, *, refresh: bool = False) -> NodeInfo:
        assert self._info is not None
        return self._info  # from the node-signed registration: there is nothing to refresh

    def send(self, method: str, envelope: bytes, nonce: str, *,
             key_binding: bytes | None = None) -> dict[str, Any]:
        if key_binding is None:
            key_binding = self._key_binding_for(envelope)
        result = self.coordinator.route_raw(method, [(self.node.did, envelope, key_binding)],
                                            deadline_ms=int(self.timeout * 1000))[0]
        if result.outcome == "answered":
            return self._verify_reply(method, bytes(result.envelope), nonce, envelope)
        raise _outcome_error(result, self.address)


def _outcome_error(result: pb.RouteResult, address: str) -> NodeError:
    code = getattr(grpc.StatusCode, result.code, grpc.StatusCode.UNKNOWN)
    if result.outcome in ("unreachable", "offline", "deadline"):
        return NodeUnreachable(f"{result.message} ({result.outcome}); nothing was changed, "
                               "retry later", code)
    return NodeError(result.message, code)


class CoordinatorClient:
    """The coordinator's API for requesters and wallets, verifying what it hands out."""

    def __init__(self, address: str, ca_pem: bytes, *, timeout: float = 30.0,
                 pinned: Iterable[str] | None = None, listing_ttl: float = 30.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.address = address
        self.timeout = timeout
        self.pinned = frozenset(pinned) if pinned is not None else None
        # Listings are reused for listing_ttl seconds (0: ask every time); health in a
        # reused listing may be that old, which routing does not depend on.
        self.listing_ttl = listing_ttl
        self._listings: dict[tuple[str, tuple[str, ...]], tuple[float, list[NetworkNode]]] = {}
        self._clients: dict[tuple[str, str, str], RoutedNodeClient] = {}
        self._channel = secure_channel(address, ca_pem, max_message_bytes=max_message_bytes)
        self._stub = pb_grpc.CoordinatorStub(self._channel)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self._channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, name: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, name)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise CoordinatorError(f"the coordinator at {self.address} is unreachable "
                                       f"({code.name}); nothing was changed, retry later",
                                       code) from None
            raise CoordinatorError(exc.details() or code.name, code) from None

    def nodes(self, *, dataset: str = "", regions: Iterable[str] = (),
              fresh: bool = False) -> list[NetworkNode]:
        """Registered nodes (optionally offering ``dataset``, in ``regions``), each
        registration verified; nodes outside ``pinned`` are left out. A listing younger than
        ``listing_ttl`` is reused unless ``fresh``."""
        key = (dataset, tuple(regions))
        cached = self._listings.get(key)
        if cached is not None and not fresh and time.monotonic() - cached[0] < self.listing_ttl:
            return list(cached[1])
        reply = self._call("ListNodes", pb.ListNodesRequest(version=VERSION, dataset=dataset,
                                                             regions=list(regions)))
        nodes = []
        for entry in reply.nodes:
            try:
                registration = verify_registration(json.loads(entry.registration))
            except (ValueError, RegistrationError, ConsentError) as exc:
                raise NodeProtocolError(f"the coordinator listed a registration that does not "
                                        f"verify: {exc}") from None
            if self.pinned is not None and registration.did not in self.pinned:
                continue
            nodes.append(NetworkNode(registration, entry.health, entry.last_contact,
                                     entry.last_error))
        self._listings[key] = (time.monotonic(), nodes)
        return list(nodes)

    def route_raw(self, method: str, targets: list[tuple[str, bytes, bytes]], *,
                  deadline_ms: int = 0) -> list[pb.RouteResult]:
        """Forward (node DID, envelope, key binding) targets; the coordinator's raw results."""
        request = pb.RouteRequest(version=VERSION, method=method, deadline_ms=deadline_ms,
                                  targets=[pb.RouteTarget(node_did=d, envelope=e, key_binding=k)
                                           for d, e, k in targets])
        timeout = max(self.timeout, deadline_ms / 1000 + 5)
        return list(self._call("Route", request, timeout=timeout).results)

    def client_for(self, node: NetworkNode, caller: Identity, *,
                   timeout: float = 10.0) -> RoutedNodeClient:
        """The routed client of ``node`` for ``caller`` (kept while its registration is the
        same, so a gm session opened once serves the following questions)."""
        key = (node.did, caller.did, node.registration.document["issued"])
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = RoutedNodeClient(self, node, caller, timeout=timeout)
        return client

    def fan_out(self, method: str, calls: list[tuple[RoutedNodeClient, dict[str, Any]]], *,
                deadline_ms: int = 0) -> list[Routed]:
        """One sealed request per node in one Route call; every answer verified here."""
        sealed = []
        for client, body in calls:
            envelope, nonce = client.sealed_request(method, body)
            sealed.append((client, envelope, nonce))
        results = self.route_raw(method, [(c.node.did, e, c._key_binding_for(e))
                                          for c, e, _ in sealed], deadline_ms=deadline_ms)
        out = []
        for (client, envelope, nonce), result in zip(sealed, results, strict=True):
            if result.node_did != client.node.did:
                raise NodeProtocolError("the coordinator answered for another node")
            out.append(_routed(client, method, envelope, nonce, result))
        return out

    def relay_revocation(self, clients: list[RoutedNodeClient], revocation: dict[str, Any],
                         *, ledger_entries: Mapping[str, dict[str, Any]] | None = None
                         ) -> tuple[str, list[Relayed]]:
        """Hand the coordinator a signed revocation sealed to each node holding the grant.

        Returns the relay id and, per node, ``delivered`` (with the node's signed receipt,
        verified here), ``pending`` (not reached yet: the coordinator keeps retrying) or
        ``refused`` (the node's reason). Deliver to nodes directly as well when you can: a
        node answers only from its own grants store. ``ledger_entries`` (per node DID) asks
        a node to endorse the revocation's ledger entry, as a direct Revoke does. A gm node's
        request is sealed in a session of its own (``NodeClient.sealed_for_relay``), which
        the node opens whenever the coordinator delivers it.
        """
        sealed = []
        for client in clients:
            body: dict[str, Any] = {"revocation": revocation}
            entry = (ledger_entries or {}).get(client.node.did)
            if entry is not None:
                body["ledger_entry"] = entry
            sealed.append((client, *client.sealed_for_relay("Revoke", body)))
        reply = self._call("RelayRevocation", pb.RelayRevocationRequest(
            version=VERSION, targets=[pb.RouteTarget(node_did=c.node.did, envelope=e,
                                                     key_binding=k)
                                      for c, e, _, k in sealed]))
        out = []
        for (client, envelope, nonce, _), result in zip(sealed, reply.results, strict=True):
            if result.node_did != client.node.did:
                raise NodeProtocolError("the coordinator answered for another node")
            document = None
            if result.state == "delivered":
                document = client._verify_reply("Revoke", bytes(result.envelope), nonce,
                                                envelope)
            out.append(Relayed(result.node_did, result.state, result.message, document))
        return reply.relay_id, out

    def status(self) -> dict[str, Any]:
        reply = self._call("Status", pb.StatusRequest(version=VERSION))
        return dict(json.loads(reply.document))


def _routed(client: RoutedNodeClient, method: str, envelope: bytes, nonce: str,
            result: pb.RouteResult) -> Routed:
    if result.outcome != "answered":
        return Routed(result.node_did, result.outcome, result.code, result.message,
                      elapsed_ms=result.elapsed_ms)
    try:
        document = client._verify_reply(method, bytes(result.envelope), nonce, envelope)
    except NodeProtocolError as exc:
        # Dropped and reported: an answer whose signature fails counts as no answer.
        return Routed(result.node_did, "bad-signature", "DATA_LOSS", str(exc),
                      elapsed_ms=result.elapsed_ms)
    return Routed(result.node_did, "answered", "OK", "", document, result.elapsed_ms)
