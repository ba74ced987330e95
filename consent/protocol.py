"""The sealed-request protocol of ``sovereign.v1.AgentNode`` (protos/sovereign/v1/node.proto),
both ends of it: the one module the node, the requester and the wallet import.

A request is RFC 8785 canonical JSON ``{"v": 1, "method", "nonce", "ts", "body"}`` sealed to
the node in its crypto profile (intl: ``consent.envelope``, a NaCl box; gm:
``consent.envelope_gm``, an SM2-authenticated SM4-GCM session whose opening carries the
caller's signed SM2KeyBinding). A reply is a W3C Data Integrity document ``{"v": 1, "method",
"in_reply_to", "issued", "body", "proof"}`` signed by the node and sealed back to the caller
(gm: in the same session). The node's self-signed NodeInfo names the DID (and in gm the SM2
key) requests are sealed to.

Here live the steps both ends must agree on: building and sealing a request, checking the
envelope's profile, opening a request and checking its shape, signing and sealing a reply,
opening and verifying a reply, and checking a NodeInfo. What each end keeps to itself stays
with it: the node's replay guard and handlers (``agent_node.service``), the client's channel,
sessions and retries (``agent_node.client``). Errors are ``ProtocolError`` subclasses whose
``reason`` is a short machine-readable word and whose message says how to fix the call. The
coordinator never imports this module: it forwards envelopes it cannot open.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from consent.canonical import canonicalize
from consent.envelope import PROFILE_INTL, open_sealed, seal
from consent.envelope_gm import (
    PROFILE_GM,
    GMSession,
    GMSessionCache,
    RelayedReply,
    open_relayed,
    verify_key_binding,
)
from consent.errors import ConsentError, EnvelopeError
from consent.identity import Identity
from consent.integrity import SM2_FRAGMENT, sign_document, verify_document
from consent.sm import SM2PublicKey

VERSION = 1
PROFILE_BYTES = {"intl": PROFILE_INTL, "gm": PROFILE_GM}  # byte 1 of every envelope
MAX_KEY_BINDING_BYTES = 4096
# A relayed request (a revocation the coordinator retries) may arrive long after it was
# sealed; its SM2KeyBinding is accepted up to this old (a grant lives 72 hours at most).
RELAYED_MAX_AGE = timedelta(days=30)
#: What a node answers a request in: None (intl), a gm session id, or a relayed gm opening's
#: reply side.
ReplyContext = bytes | RelayedReply | None


class ProtocolError(ConsentError):
    """A request or reply breaks the protocol; ``reason`` names how (for logs and mapping)."""

    reason = "invalid-request"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class WrongProfile(ProtocolError):
    """The envelope is in the other crypto profile than the node's."""

    reason = "wrong-profile"


class BadEnvelope(ProtocolError):
    """The envelope cannot be opened (or a reply cannot be sealed)."""

    reason = "bad-envelope"


class MalformedRequest(ProtocolError):
    """The opened request is not a version-1 request object for this method."""


class BadReply(ProtocolError):
    """A reply or a NodeInfo does not verify: bad signature, another signer or request."""

    reason = "bad-reply"


def format_ts(moment: datetime) -> str:
    """A request's ``ts``: RFC 3339 UTC with microseconds."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_ts(value: Any) -> datetime:
    """A request's ``ts`` as a time; MalformedRequest unless an RFC 3339 time with a zone."""
    if not isinstance(value, str):
        raise MalformedRequest("the request's ts must be an RFC 3339 UTC time string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedRequest("the request's ts is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise MalformedRequest("the request's ts must carry a time zone (end it with Z)")
    return moment


# -- the caller's side ------------------------------------------------------------------------


def request_message(method: str, body: dict[str, Any]) -> tuple[bytes, str]:
    """(canonical plaintext, nonce) of a request for ``method`` with ``body``."""
    nonce = secrets.token_hex(16)
    message = canonicalize({"v": VERSION, "method": method, "nonce": nonce,
                            "ts": format_ts(datetime.now(UTC)), "body": body})
    return message, nonce


def seal_request(message: bytes, caller: Identity, node_did: str,
                 session: GMSession | None = None) -> bytes:
    """The envelope of ``message``: in the gm ``session`` when given, else a NaCl box."""
    if session is not None:
        return session.seal(message)
    return seal(message, caller, node_did)


def open_reply(envelope: bytes, caller: Identity, node_did: str,
               session: GMSession | None = None) -> tuple[str, bytes]:
    """(sender DID, plaintext) of a reply; in gm the session proves the sender is the node."""
    if session is None:
        opened = open_sealed(envelope, caller)
        return opened.sender_did, opened.plaintext
    return node_did, session.open_reply(envelope)


def verify_reply(sender: str, plaintext: bytes, method: str, nonce: str, node_did: str, *,
                 require_sm2: bool = False) -> dict[str, Any]:
    """The reply document, once it is signed (and was sealed) by ``node_did`` and answers
    this request; BadReply otherwise."""
    try:
        document = orjson.loads(plaintext)
        signer = verify_document(document, require_sm2=require_sm2)
    except (ValueError, ConsentError) as exc:
        raise BadReply(f"the node's reply does not verify: {exc}") from None
    if sender != node_did or signer != node_did:
        raise BadReply("the reply was not sealed and signed by the node")
    if document.get("method") != method or document.get("in_reply_to") != nonce:
        raise BadReply("the reply answers another request")
    return dict(document)


def node_sm2_key(document: dict[str, Any]) -> SM2PublicKey:
    """A gm NodeInfo's session key: named in the document and by its (verified) SM2 proof."""
    proof = document.get("proof")
    method = proof[0].get("verificationMethod", "") if isinstance(proof, list) else ""
    named = document.get("sm2PublicKey")
    if not isinstance(named, str) or method != f"{document.get('did')}{SM2_FRAGMENT}{named}":
        raise BadReply("the gm NodeInfo's sm2PublicKey is not the key of its SM2 proof")
    try:
        return SM2PublicKey.from_hex(named)
    except ValueError:
        raise BadReply("the gm NodeInfo names no valid SM2 public key") from None


def verify_node_info(raw: bytes) -> tuple[dict[str, Any], SM2PublicKey | None]:
    """A NodeInfo document, verified to be signed by the DID it describes (a gm node's with
    the SM2 chain, which vouches for the key sessions are opened to), and its SM2 key."""
    try:
        document = json.loads(raw)
        gm = isinstance(document, dict) and document.get("profile") == "gm"
        signer = verify_document(document, require_sm2=gm)
    except (ValueError, ConsentError) as exc:
        raise BadReply(f"the node's NodeInfo does not verify: {exc}") from None
    if document.get("did") != signer or document.get("type") != "NodeInfo":
        raise BadReply("the NodeInfo is not signed by the DID it describes")
    return document, node_sm2_key(document) if gm else None


# -- the node's side --------------------------------------------------------------------------


def check_profile(envelope: bytes, profile: str) -> None:
    """Refuse the other profile's envelopes before any crypto runs (byte 1 names it)."""
    expected = PROFILE_BYTES[profile]
    if len(envelope) > 1 and envelope[1] != expected and envelope[1] in PROFILE_BYTES.values():
        other = "gm" if envelope[1] == PROFILE_GM else "intl"
        raise WrongProfile(
            f"this node uses the {profile} crypto profile and refuses {other} "
            "envelopes; use the node's profile, see GetNodeInfo")


def sm2_key_lookup(key_binding: bytes, max_age: timedelta, clock_skew: timedelta
                   ) -> Callable[[str], SM2PublicKey]:
    """The sender's SM2 key from its signed SM2KeyBinding; called once per new session."""
    def lookup(sender_did: str) -> SM2PublicKey:
        if len(key_binding) > MAX_KEY_BINDING_BYTES:
            raise LookupError("the key_binding field is too large")
        try:
            document = json.loads(key_binding) if key_binding else None
        except ValueError:
            raise LookupError("the key_binding field is not JSON") from None
        return verify_key_binding(document, sender_did, max_age=max_age, clock_skew=clock_skew)
    return lookup


def open_request(envelope: bytes, key_binding: bytes, node: Identity, profile: str,
                 sessions: GMSessionCache, *, max_age: timedelta, clock_skew: timedelta,
                 relayed: bool = False) -> tuple[str, bytes, ReplyContext]:
    """(caller DID, plaintext, what to answer in) of a request's envelope.

    ``relayed``: the request came through a relay that may have kept it for long (only for
    requests that change nothing when applied twice): a gm one must open a session of its
    own, accepted whatever its age and kept in no cache (``envelope_gm.open_relayed``).
    """
    check_profile(envelope, profile)
    try:
        if profile == "gm" and relayed:
            gm, reply = open_relayed(envelope, node, sm2_key_lookup(
                key_binding, RELAYED_MAX_AGE, clock_skew))
            return gm.sender_did, gm.plaintext, reply
        if profile == "gm":
            gm = sessions.open(envelope, node, sm2_key_lookup(key_binding, max_age, clock_skew))
            return gm.sender_did, gm.plaintext, gm.session_id
        opened = open_sealed(envelope, node)
    except EnvelopeError as exc:
        raise BadEnvelope(f"the envelope cannot be opened ({exc}); seal it to this "
                          "node's DID from GetNodeInfo") from None
    return opened.sender_did, opened.plaintext, None


def parse_request(plaintext: bytes, method: str) -> dict[str, Any]:
    """The opened request, checked: JSON, version, method and a body object (the nonce and
    time are the node's replay guard's to check)."""
    try:
        message = orjson.loads(plaintext)
    except ValueError:
        raise MalformedRequest("the sealed request is not JSON") from None
    if not isinstance(message, dict) or message.get("v") != VERSION:
        raise MalformedRequest(f"the sealed request must be a JSON object with v = {VERSION}")
    if message.get("method") != method:
        raise MalformedRequest(f"the sealed request is for another method; seal one for "
                               f"{method}", reason="wrong-method")
    if not isinstance(message.get("body"), dict):
        raise MalformedRequest("the sealed request needs a body object")
    return message


def sign_reply(method: str, nonce: str, issued: str, body: dict[str, Any],
               signer: Identity) -> bytes:
    """The node-signed reply document as the bytes to seal.

    The signature covers the canonical form; the envelope carries plain JSON, which the
    caller parses and re-canonicalises to verify (canonicalising twice cost ~0.1 ms).
    """
    document = sign_document({"v": VERSION, "method": method, "in_reply_to": nonce,
                              "issued": issued, "body": body}, signer)
    return orjson.dumps(document)


def seal_reply(payload: bytes, node: Identity, caller: str, sessions: GMSessionCache,
               session_id: ReplyContext = None) -> bytes:
    """The reply envelope: a NaCl box to the caller, or a kind-3 message of its gm session
    (``session_id`` as ``open_request`` returned it)."""
    if session_id is None:
        return seal(payload, node, caller)
    try:
        if isinstance(session_id, RelayedReply):
            return session_id.seal(payload)
        return sessions.seal_reply(session_id, payload)
    except EnvelopeError as exc:
        raise BadEnvelope(f"the reply cannot be sealed ({exc})") from None


# -- reports: several queries in one sealed request -------------------------------------------

#: How many queries a node takes in one report unless its node.toml says otherwise.
DEFAULT_MAX_REPORT = 32
REFUSED_FIELDS = ("code", "reason", "message")


def report_body(queries: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of a Query request carrying a **report**: several queries answered in one
    sealed, signed reply, each as if asked alone."""
    return {"report": list(queries)}


def report_queries(body: dict[str, Any], limit: int) -> list[Any]:
    """The queries of a report body; MalformedRequest (one sentence) for a report that is
    not a list, is empty or holds more than the node's ``limit``."""
    if "query" in body:
        raise MalformedRequest("a request carries either a query or a report, not both")
    queries = body.get("report")
    if not isinstance(queries, list):
        raise MalformedRequest("a report must be a list of queries")
    if not queries:
        raise MalformedRequest("the report is empty: send at least one query",
                               reason="empty-report")
    if len(queries) > limit:
        raise MalformedRequest(f"the report holds {len(queries)} queries, more than this "
                               f"node's limit of {limit}; split it into reports of at most "
                               f"{limit}", reason="report-too-large")
    return queries


def report_answer(answer: dict[str, Any]) -> dict[str, Any]:
    """One answered query of a report reply."""
    return {"answer": answer}


def report_refusal(code: str, reason: str, message: str) -> dict[str, Any]:
    """One refused query of a report reply: the gRPC status name it would have had alone,
    its reason word and its sentence."""
    return {"refused": {"code": code, "reason": reason, "message": message}}


def report_results(body: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The verified reply body's results, one per query sent and in order, each exactly an
    ``answer`` object or a ``refused`` object; BadReply otherwise."""
    results = body.get("report")
    if not isinstance(results, list) or len(results) != count:
        raise BadReply(f"the node's report reply does not hold one result per query "
                       f"({count} sent)")
    for item in results:
        ok = isinstance(item, dict) and len(item) == 1 and (
            isinstance(item.get("answer"), dict)
            or (isinstance(item.get("refused"), dict)
                and all(isinstance(item["refused"].get(f), str) for f in REFUSED_FIELDS)))
        if not ok:
            raise BadReply("a result in the node's report reply is neither an answer nor a "
                           "refusal")
    return results
