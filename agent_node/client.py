"""Python client of the ``sovereign.v1.AgentNode`` service, for wallets and requesters.

The client trusts the node's TLS CA, fetches the node's self-signed NodeInfo (verified with
``consent.integrity.verify_document``), seals every request to the node's did:key with a fresh
random nonce and timestamp, and verifies that every response is signed by that same DID,
answers this method and echoes this request's nonce.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from agent_node.accesslog import HEAD_TYPE, verify_events
from consent.canonical import canonicalize
from consent.envelope import open_sealed, seal
from consent.errors import ConsentError
from consent.identity import Identity
from consent.integrity import verify_document
from protos.sovereign.v1 import node_pb2, node_pb2_grpc
from protos.transport import DEFAULT_MAX_MESSAGE_BYTES, secure_channel

VERSION = 1
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class NodeError(Exception):
    """The node refused a call; ``code`` is its gRPC status, ``str()`` its message."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> None:
        super().__init__(message)
        self.code = code


class NodeUnreachable(NodeError):
    """The node could not be reached (nothing was changed; retry)."""


class NodeProtocolError(NodeError):
    """The node's reply failed verification (bad signature, wrong nonce, malformed)."""


@dataclass(frozen=True)
class NodeInfo:
    did: str
    name: str
    region: str
    residency: str
    profile: str
    k_threshold: int
    max_ttl_hours: int
    access_log_head: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)
    document: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class GrantAck:
    grant_id: str
    accepted_at: str
    expires: str
    node_did: str
    document: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class RevocationAck:
    grant_id: str
    revoked_at: str
    node_did: str
    document: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class GrantStatus:
    grant_id: str
    status: str
    requester: str
    purpose: str
    scopes: list[str]
    queries_used: int
    max_queries: int | None
    epsilon_spent: float
    dp_epsilon: float | None
    expires: str
    revoked_at: str | None


@dataclass(frozen=True)
class AnchorClaim:
    """The node's claim that its chain head at ``sequence`` is in the ledger.

    ``on_chain`` says the claimed head hash is the node's own chain hash at that sequence (on
    the chain that ends at the signed head); ``receipt`` is the ledger receipt as the node
    kept it, still to be verified with the log's public key (wallet.anchoring does).
    """

    sequence: int
    hash: str
    receipt: Any
    on_chain: bool


@dataclass(frozen=True)
class AccessLog:
    """Events that touched the caller; ``verified`` per event, chain head signature checked."""

    events: list[dict[str, Any]]
    head: dict[str, Any]
    chain_intact: bool
    anchors: list[AnchorClaim] = field(default_factory=list)


def _anchor_claims(raw: Any, chain: list[list[Any]], intact: bool) -> list[AnchorClaim]:
    """Parse the node's anchors leniently: a malformed one becomes a claim that fails later."""
    if not isinstance(raw, list):
        return []
    links = {int(seq): hash_ for seq, _, hash_ in chain}
    claims = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("sequence"), int) \
                or not isinstance(item.get("hash"), str):
            continue
        sequence = item["sequence"]
        claims.append(AnchorClaim(sequence, item["hash"], item.get("receipt"),
                                  intact and links.get(sequence) == item["hash"]))
    return sorted(claims, key=lambda c: c.sequence)


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class NodeClient:
    def __init__(self, address: str, ca_pem: bytes, caller: Identity, *, timeout: float = 10.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.address = address
        self.caller = caller
        self.timeout = timeout
        self._channel = secure_channel(address, ca_pem, max_message_bytes=max_message_bytes)
        self._stub = node_pb2_grpc.AgentNodeStub(self._channel)
        self._info: NodeInfo | None = None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rpc_error(self, exc: grpc.RpcError) -> NodeError:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        if code in UNREACHABLE:
            return NodeUnreachable(f"the node at {self.address} is unreachable ({code.name}); "
                                   "nothing was changed, retry later", code)
        return NodeError(exc.details() if hasattr(exc, "details") else str(exc), code)

    def node_info(self, *, refresh: bool = False) -> NodeInfo:
        """The node's self-signed description (verified; cached unless ``refresh``)."""
        if self._info is not None and not refresh:
            return self._info
        try:
            reply = self._stub.GetNodeInfo(node_pb2.NodeInfoRequest(version=VERSION),
                                           timeout=self.timeout)
            document = json.loads(reply.document)
            signer = verify_document(document)
        except grpc.RpcError as exc:
            raise self._rpc_error(exc) from None
        except (ValueError, ConsentError) as exc:
            raise NodeProtocolError(f"the node's NodeInfo does not verify: {exc}") from None
        if document.get("did") != signer or document.get("type") != "NodeInfo":
            raise NodeProtocolError("the NodeInfo is not signed by the DID it describes")
        self._info = NodeInfo(
            did=signer, name=document["name"], region=document["region"],
            residency=document["residency"], profile=document["profile"],
            k_threshold=int(document["k_threshold"]), max_ttl_hours=int(document["max_ttl_hours"]),
            access_log_head=document.get("access_log_head", {}),
            datasets=document.get("datasets", {}), document=document)
        return self._info

    def sealed_request(self, method: str, body: dict[str, Any]) -> tuple[bytes, str]:
        """The sealed envelope for one call (exposed so tests can replay or tamper with it)."""
        nonce = secrets.token_hex(16)
        message = {"v": VERSION, "method": method, "nonce": nonce,
                   "ts": _time(datetime.now(UTC)), "body": body}
        return seal(canonicalize(message), self.caller, self.node_info().did), nonce

    def send(self, method: str, envelope: bytes, nonce: str) -> dict[str, Any]:
        """Send a sealed envelope and return the verified response document."""
        call = getattr(self._stub, method)
        try:
            reply = call(node_pb2.SealedRequest(version=VERSION, envelope=envelope),
                         timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._rpc_error(exc) from None
        return self._verify_reply(method, reply.envelope, nonce)

    def _verify_reply(self, method: str, envelope: bytes, nonce: str) -> dict[str, Any]:
        node_did = self.node_info().did
        try:
            opened = open_sealed(envelope, self.caller)
            document = json.loads(opened.plaintext)
            signer = verify_document(document)
        except (ValueError, ConsentError) as exc:
            raise NodeProtocolError(f"the node's reply does not verify: {exc}") from None
        if opened.sender_did != node_did or signer != node_did:
            raise NodeProtocolError("the reply was not sealed and signed by the node")
        if document.get("method") != method or document.get("in_reply_to") != nonce:
            raise NodeProtocolError("the reply answers another request")
        return document

    def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        envelope, nonce = self.sealed_request(method, body)
        return self.send(method, envelope, nonce)

    # -- API ----------------------------------------------------------------------------------

    def query(self, query: dict[str, Any]) -> dict[str, Any]:
        """The node-signed response document; its ``body.answer`` holds the aggregates."""
        return self.call("Query", {"query": query})

    def submit_grant(self, credential: dict[str, Any], *,
                     subject_salt: str | None = None) -> GrantAck:
        """Deliver a signed grant; ``subject_salt`` (hex) lets the node name the subject in
        the ledger only by its salted commitment (docs/audit.md)."""
        body: dict[str, Any] = {"credential": credential}
        if subject_salt is not None:
            body["subject_salt"] = subject_salt
        document = self.call("SubmitGrant", body)
        body = document["body"]
        return GrantAck(body["grant_id"], body["accepted_at"], body["expires"],
                        self.node_info().did, document)

    def revoke(self, revocation: dict[str, Any]) -> RevocationAck:
        document = self.call("Revoke", {"revocation": revocation})
        body = document["body"]
        return RevocationAck(body["grant_id"], body["revoked_at"], self.node_info().did, document)

    def grant_status(self, grant_ids: list[str] | None = None) -> list[GrantStatus]:
        document = self.call("GrantStatus", {"grant_ids": list(grant_ids or [])})
        return [GrantStatus(**g) for g in document["body"]["grants"]]

    def access_events(self, since: datetime | None = None) -> AccessLog:
        body = {"since": _time(since) if since else None}
        reply = self.call("ListAccessEvents", body)["body"]
        head = reply["head"]
        node_did = self.node_info().did
        try:
            signer = verify_document(head)
        except ConsentError as exc:
            raise NodeProtocolError(f"the access-log head signature is invalid: {exc}") from None
        if signer != node_did or head.get("type") != HEAD_TYPE:
            raise NodeProtocolError("the access-log head is not signed by the node")
        check = verify_events(reply["events"], reply["chain"], int(head["seq"]), head["hash"])
        events = [{**e["body"], "prev_hash": e["prev_hash"], "hash": e["hash"],
                   "verified": check.verified.get(int(e["body"]["seq"]), False)}
                  for e in reply["events"]]
        anchors = _anchor_claims(reply.get("anchors"), reply["chain"], check.chain_intact)
        return AccessLog(events=events, head=head, chain_intact=check.chain_intact,
                         anchors=anchors)

    def export(self) -> dict[str, Any]:
        return self.call("Export", {})["body"]["export"]
