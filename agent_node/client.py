"""Python client of the ``sovereign.v1.AgentNode`` service, for wallets and requesters
(its channel, gm sessions and retries; the protocol itself is ``consent.protocol``).

The client trusts the node's TLS CA, fetches the node's self-signed NodeInfo (verified with
``consent.integrity.verify_document``), seals every request to the node's did:key with a fresh
random nonce and timestamp, and verifies that every response is signed by that same DID,
answers this method and echoes this request's nonce.

Requests are sealed in the node's crypto profile (protos/sovereign/v1/node.proto): a NaCl box
in ``intl``; in ``gm`` an SM2-authenticated session (``consent.envelope_gm.GMSession``) opened
to the SM2 key of the node's SM2-signed NodeInfo, whose opening travels with the caller's
SM2KeyBinding. Only the first request of a session costs SM2 work; a session the node no
longer knows is replaced and the request sent once more (the node had done nothing).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from agent_node.accesslog import EVENT_VERSION, HEAD_TYPE, verify_events, verify_membership
from consent import protocol
from consent.canonical import canonicalize
from consent.envelope_gm import (
    KIND_OPEN,
    PROFILE_GM,
    SESSION_ID_BYTES,
    GMSession,
    issue_key_binding,
)
from consent.errors import ConsentError
from consent.identity import Identity
from consent.integrity import verify_document
from consent.sm import SM2PublicKey
from protos.sovereign.v1 import node_pb2, node_pb2_grpc
from protos.transport import DEFAULT_MAX_MESSAGE_BYTES, secure_channel

VERSION = 1
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
GM_SESSION_TTL = timedelta(minutes=30)
GM_SESSION_MARGIN = timedelta(minutes=1)  # replace a session this long before it expires
# The node's words for a session it lost or an opening that waited too long (e.g. while the
# node was down): in both cases it did nothing, and a new session fixes it.
GM_SESSION_RETRY = ("unknown or expired gm session", "gm session opening is too old",
                    "SM2KeyBinding is too old")


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
    sm2_public_key: SM2PublicKey | None = field(default=None, repr=False)  # gm nodes only


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
    epsilon_budget: float | None = None  # dp mode: the wallet's budget or the node's default
    epsilon_left: float | None = None


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
    #: the chain hash per sequence, from the first listed event to the head (verified links
    #: only: empty when the chain does not lead to the signed head)
    chain: dict[int, str] = field(default_factory=dict)


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


def _checked_event(event: dict[str, Any], on_chain: bool) -> dict[str, Any]:
    """An event as the caller sees it: the body, ``own_grants`` and ``own_subject_refs``
    (the caller's members the node proved to be in the event's sets) and ``verified``: on
    the signed chain and, for events that commit to their sets by Merkle roots (v2), every
    membership proof holds and there is at least one. ``own_left_out``: the caller's grants
    the node proved it left out of the answer because their privacy budget was spent."""
    body = event["body"]
    own: dict[str, list[str]] = {"grants": [], "subjects": [], "left_out": []}
    proven = on_chain
    if body.get("v") == EVENT_VERSION:
        found = event.get("proofs")
        proofs: dict[str, Any] = found if isinstance(found, dict) else {}
        for kind, size, root in (("grants", "grant_count", "grants_root"),
                                 ("subjects", "subject_count", "subjects_root"),
                                 ("left_out", "left_out_count", "left_out_root")):
            given = proofs.get(kind)
            listed: list[Any] = given if isinstance(given, list) else []
            for proof in listed:
                if verify_membership(proof, body.get(size), body.get(root)):
                    own[kind].append(str(proof["member"]))
                else:
                    proven = False
        proven = proven and bool(own["grants"] or own["subjects"] or own["left_out"])
    return {**body, "prev_hash": event["prev_hash"], "hash": event["hash"],
            "own_grants": own["grants"], "own_subject_refs": own["subjects"],
            "own_left_out": own["left_out"], "verified": proven}


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
        self._gm_lock = threading.Lock()
        self._gm_session: GMSession | None = None
        self._gm_binding = b""  # the current session's SM2KeyBinding (canonical JSON)
        self._gm_sessions: dict[bytes, GMSession] = {}  # by session id, current and previous
        self._relay_sessions: dict[bytes, GMSession] = {}  # one-request sessions (relayed)

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
            document, sm2_key = protocol.verify_node_info(reply.document)
        except grpc.RpcError as exc:
            raise self._rpc_error(exc) from None
        except protocol.ProtocolError as exc:
            raise NodeProtocolError(str(exc)) from None
        self._info = NodeInfo(
            did=document["did"], name=document["name"], region=document["region"],
            residency=document["residency"], profile=document["profile"],
            k_threshold=int(document["k_threshold"]), max_ttl_hours=int(document["max_ttl_hours"]),
            access_log_head=document.get("access_log_head", {}),
            datasets=document.get("datasets", {}), document=document,
            sm2_public_key=sm2_key)
        return self._info

    @property
    def gm(self) -> bool:
        """True when the node speaks the gm profile (so requests go through an SM2 session)."""
        return self.node_info().profile == "gm"

    def gm_session(self) -> tuple[GMSession, bytes]:
        """The live gm session with the node and its key binding, opened when needed."""
        with self._gm_lock:
            session = self._gm_session
            if session is None or datetime.now(UTC) >= session.expires - GM_SESSION_MARGIN:
                session = self._open_gm_session()
            return session, self._gm_binding

    def _open_gm_session(self) -> GMSession:
        info = self.node_info()
        if self.caller.sm2 is None or info.sm2_public_key is None:
            raise NodeError("this node uses the gm crypto profile, which needs a gm identity "
                            "with an SM2 key: create one with 'sov-query init --profile gm' or "
                            "'consent-wallet init --profile gm'",
                            grpc.StatusCode.FAILED_PRECONDITION)
        session = GMSession.open_to(info.did, info.sm2_public_key, self.caller,
                                    ttl=GM_SESSION_TTL)
        self._gm_binding = canonicalize(issue_key_binding(self.caller))
        # Replies to requests still in flight in the previous session must stay openable.
        self._gm_sessions = {sid: s for sid, s in self._gm_sessions.items()
                             if s is self._gm_session}
        self._gm_sessions[session.session_id] = session
        self._gm_session = session
        return session

    def reset_gm_session(self) -> None:
        """Forget the current session: the next request opens a new one."""
        with self._gm_lock:
            self._gm_session = None

    def sealed_request(self, method: str, body: dict[str, Any]) -> tuple[bytes, str]:
        """The sealed envelope for one call (exposed so tests can replay or tamper with it)."""
        message, nonce = protocol.request_message(method, body)
        if self.gm:
            try:
                return protocol.seal_request(message, self.caller, self.node_info().did,
                                             self.gm_session()[0]), nonce
            except ConsentError as exc:
                raise NodeError(f"cannot seal a gm request: {exc}") from None
        return protocol.seal_request(message, self.caller, self.node_info().did), nonce

    def sealed_for_relay(self, method: str, body: dict[str, Any]
                         ) -> tuple[bytes, str, bytes]:
        """(envelope, nonce, key binding) of a request a relay may keep and deliver later
        (a revocation the coordinator retries): in gm, a session of its own that the node
        opens whatever its age (``consent.envelope_gm.open_relayed``); in intl, a NaCl box
        as any request. The reply opens with this client (``_verify_reply``)."""
        if not self.gm:
            envelope, nonce = self.sealed_request(method, body)
            return envelope, nonce, b""
        info = self.node_info()
        if self.caller.sm2 is None or info.sm2_public_key is None:
            raise NodeError("this node uses the gm crypto profile, which needs a gm identity "
                            "with an SM2 key", grpc.StatusCode.FAILED_PRECONDITION)
        message, nonce = protocol.request_message(method, body)
        try:
            session = GMSession.open_to(info.did, info.sm2_public_key, self.caller,
                                        ttl=GM_SESSION_TTL)
            binding = canonicalize(issue_key_binding(self.caller))
        except ConsentError as exc:
            raise NodeError(f"cannot seal a gm request: {exc}") from None
        with self._gm_lock:
            self._relay_sessions[session.session_id] = session
        return protocol.seal_request(message, self.caller, info.did, session), nonce, binding

    def _key_binding_for(self, envelope: bytes) -> bytes:
        """The SM2KeyBinding travels with session openings (gm kind 1) only."""
        if len(envelope) > 2 and envelope[1] == PROFILE_GM and envelope[2] == KIND_OPEN:
            with self._gm_lock:
                return self._gm_binding
        return b""

    def send(self, method: str, envelope: bytes, nonce: str, *,
             key_binding: bytes | None = None) -> dict[str, Any]:
        """Send a sealed envelope and return the verified response document.

        ``key_binding`` overrides the SM2KeyBinding sent with a gm session opening (tests).
        """
        if key_binding is None:
            key_binding = self._key_binding_for(envelope)
        call = getattr(self._stub, method)
        try:
            reply = call(node_pb2.SealedRequest(version=VERSION, envelope=envelope,
                                                key_binding=key_binding),
                         timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._rpc_error(exc) from None
        return self._verify_reply(method, reply.envelope, nonce, envelope)

    def _open_reply(self, envelope: bytes, request: bytes) -> tuple[str, bytes]:
        """(sender DID, plaintext) of a reply; in gm the session proves the sender is the node."""
        if not self.gm:
            return protocol.open_reply(envelope, self.caller, self.node_info().did)
        session_id = request[3:3 + SESSION_ID_BYTES]
        with self._gm_lock:
            session = (self._gm_sessions.get(session_id)
                       or self._relay_sessions.pop(session_id, None))
        if session is None:
            raise NodeProtocolError("the reply belongs to a gm session this client closed")
        return protocol.open_reply(envelope, self.caller, self.node_info().did, session)

    def _verify_reply(self, method: str, envelope: bytes, nonce: str,
                      request: bytes = b"") -> dict[str, Any]:
        node_did = self.node_info().did
        # A gm node puts its SM2 proof on every reply but Query answers (node.proto).
        require_sm2 = self.gm and method != "Query"
        try:
            sender, plaintext = self._open_reply(envelope, request)
            return protocol.verify_reply(sender, plaintext, method, nonce, node_did,
                                         require_sm2=require_sm2)
        except protocol.ProtocolError as exc:
            raise NodeProtocolError(str(exc)) from None
        except ConsentError as exc:  # the envelope itself does not open
            raise NodeProtocolError(f"the node's reply does not verify: {exc}") from None

    def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        envelope, nonce = self.sealed_request(method, body)
        try:
            return self.send(method, envelope, nonce)
        except NodeError as exc:
            # The node lost the session (restart, expiry, eviction) and did nothing: open a
            # new session and send the request once more, with a fresh nonce.
            if not (self.gm and exc.code == grpc.StatusCode.UNAUTHENTICATED
                    and any(reason in str(exc) for reason in GM_SESSION_RETRY)):
                raise
        self.reset_gm_session()
        envelope, nonce = self.sealed_request(method, body)
        return self.send(method, envelope, nonce)

    # -- API ----------------------------------------------------------------------------------

    def query(self, query: dict[str, Any]) -> dict[str, Any]:
        """The node-signed response document; its ``body.answer`` holds the aggregates."""
        return self.call("Query", {"query": query})

    def report(self, queries: list[dict[str, Any]]
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Several queries in one sealed request, a **report** (``consent.protocol``): the
        node-signed reply document and its results, one per query and in order, each
        ``{"answer": ...}`` or ``{"refused": {"code", "reason", "message"}}``."""
        document = self.call("Query", protocol.report_body(queries))
        try:
            return document, protocol.report_results(document["body"], len(queries))
        except protocol.ProtocolError as exc:
            raise NodeProtocolError(str(exc)) from None

    def submit_grant(self, credential: dict[str, Any], *, subject_salt: str | None = None,
                     ledger_entry: dict[str, Any] | None = None) -> GrantAck:
        """Deliver a signed grant; ``subject_salt`` (hex) lets the node name the subject in
        the ledger only by its salted commitment (docs/audit.md); ``ledger_entry`` (the
        grant's entry signed with its per-grant key, ``ledger.customer``) asks the node to
        endorse it: the reply's body then holds ``ledger_endorsement`` or ``ledger_refusal``."""
        body: dict[str, Any] = {"credential": credential}
        if subject_salt is not None:
            body["subject_salt"] = subject_salt
        if ledger_entry is not None:
            body["ledger_entry"] = ledger_entry
        document = self.call("SubmitGrant", body)
        body = document["body"]
        return GrantAck(body["grant_id"], body["accepted_at"], body["expires"],
                        self.node_info().did, document)

    def revoke(self, revocation: dict[str, Any], *,
               ledger_entry: dict[str, Any] | None = None) -> RevocationAck:
        """Deliver a signed revocation (and ask the node to endorse its ledger entry)."""
        body: dict[str, Any] = {"revocation": revocation}
        if ledger_entry is not None:
            body["ledger_entry"] = ledger_entry
        document = self.call("Revoke", body)
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
        events = [_checked_event(e, check.verified.get(int(e["body"]["seq"]), False))
                  for e in reply["events"]]
        anchors = _anchor_claims(reply.get("anchors"), reply["chain"], check.chain_intact)
        chain = ({int(seq): str(hash_) for seq, _, hash_ in reply["chain"]}
                 if check.chain_intact else {})
        return AccessLog(events=events, head=head, chain_intact=check.chain_intact,
                         anchors=anchors, chain=chain)

    def export(self) -> dict[str, Any]:
        return self.call("Export", {})["body"]["export"]

    def export_document(self) -> dict[str, Any]:
        """The node-signed Export reply document, whole (what a migration hands to the
        destination node, ``ledger.migration``)."""
        return self.call("Export", {})

    def import_customer(self, request: dict[str, Any], export: dict[str, Any], *,
                        subject_salt: str | None = None) -> dict[str, Any]:
        """Ask this node to import what another node exported (``request``: the caller's
        signed MigrationRequest); its signed import receipt, verified to answer ``request``."""
        from ledger.migration import MigrationError, verify_import

        body: dict[str, Any] = {"request": request, "export": export}
        if subject_salt is not None:
            body["subject_salt"] = subject_salt
        receipt = self.call("Import", body)["body"].get("receipt")
        try:
            verify_import(receipt, node_did=self.node_info().did, request=request)
        except MigrationError as exc:
            raise NodeProtocolError(f"the node's import receipt does not verify: {exc}") \
                from None
        return dict(receipt)

    def erase(self, request: dict[str, Any], *, subject_salt: str | None = None
              ) -> dict[str, Any]:
        """Ask the node to erase the caller (``request``: their signed ErasureRequest, see
        ``ledger.erasure``); the reply body with the node's proof, verified to be this node's
        proof for this caller."""
        from ledger.erasure import ErasureError, verify_proof

        body: dict[str, Any] = {"request": request}
        if subject_salt is not None:
            body["subject_salt"] = subject_salt
        reply = self.call("Erase", body)["body"]
        try:
            # A repeated request gets the proof of the first one: not checked against this.
            verify_proof(reply.get("proof"), node_did=self.node_info().did,
                         customer=self.caller.did)
        except ErasureError as exc:
            raise NodeProtocolError(f"the node's erasure proof does not verify: {exc}") from None
        return dict(reply)
