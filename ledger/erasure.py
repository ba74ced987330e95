"""Erasure requests and erasure proofs: the protocol the wallet, the node and ``sov-audit``
all speak (issue 13).

An **erasure request** is a W3C Data Integrity document the customer's wallet signs
(``consent.integrity``; in the gm profile with the SM2 proof chain)::

    {"type": "ErasureRequest", "v": 1, "subject": <customer DID>, "node": <node DID>,
     "nonce": <32 hex>, "issued": <RFC 3339 UTC>, "proof": ...}

An **erasure proof** is the node's signed statement of what it destroyed::

    {"type": "ErasureProof", "v": 1, "customer": <DID>, "node": <node DID>,
     "request": <SHA-256 hex of the request's canonical JSON>,
     "locations": [{"name", "treatment", "rows", "kept", "digest": <SM3 hex of the rows>}],
     "destroyed_keys": ["sm4:<SM3 of the wrapped key, 32 hex>"], "salt_destroyed": bool,
     "scan": {"needles": n, "shared_values_skipped": m,
              "files": [{"path", "location", "bytes", "hits"}]},
     "erased_at": <RFC 3339 UTC>, "proof": ...}

The ledger holds an ``erasure`` entry naming only ``proof_digest`` (SHA-256 of the signed
proof's canonical JSON), the customer's salted ``subject_commitment`` and the node, written
by the node (``ledger.authority``). An **erasure receipt** (what the wallet keeps and
``sov-audit verify`` reads) is ``{"format": RECEIPT_FORMAT, "proof": ..., "receipt": <the
ledger receipt of the entry, or null while not anchored>}``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from consent.canonical import canonical_sha256
from consent.errors import ConsentError
from consent.identity import Identity
from consent.integrity import format_time, sign_document, verify_document
from ledger.errors import LedgerError
from ledger.events import make_event

REQUEST_TYPE = "ErasureRequest"
PROOF_TYPE = "ErasureProof"
RECEIPT_FORMAT = "sovereign-fabric/erasure-receipt/v1"
VERSION = 1
#: A signed request older than this is refused (ask the customer to sign a new one).
MAX_REQUEST_AGE = timedelta(days=30)
_HEX64 = re.compile(r"[0-9a-f]{64}")
PROOF_FIELDS = {"type", "v", "customer", "node", "request", "locations", "destroyed_keys",
                "salt_destroyed", "scan", "erased_at", "proof"}


class ErasureError(LedgerError):
    """An erasure request or proof is malformed, unsigned, forged or not for this party."""


def issue_request(identity: Identity, node_did: str, now: datetime | None = None
                  ) -> dict[str, Any]:
    """The customer's signed request that ``node_did`` erase everything it holds on them."""
    now = now or datetime.now(UTC)
    return sign_document({"type": REQUEST_TYPE, "v": VERSION, "subject": identity.did,
                          "node": node_did, "nonce": secrets.token_hex(16),
                          "issued": format_time(now)}, identity)


def request_hash(request: Mapping[str, Any]) -> str:
    return canonical_sha256(dict(request))


def verify_request(request: Any, node_did: str, *, caller: str | None = None,
                   require_sm2: bool = False, now: datetime | None = None,
                   clock_skew: timedelta = timedelta(minutes=5)) -> str:
    """The customer DID of a valid request for ``node_did`` (sent by ``caller`` when given);
    ``ErasureError`` with one sentence otherwise."""
    if not isinstance(request, dict) or request.get("type") != REQUEST_TYPE \
            or request.get("v") != VERSION:
        raise ErasureError("the erasure request must be a signed ErasureRequest document "
                           "(consent-wallet erase makes one)")
    try:
        signer = verify_document(request, require_sm2=require_sm2)
    except ConsentError as exc:
        raise ErasureError(f"the erasure request's signature does not verify ({exc}); only "
                           "the customer's wallet can sign it") from None
    if request.get("subject") != signer:
        raise ErasureError("the erasure request is not signed by the customer it names")
    if caller is not None and caller != signer:
        raise ErasureError("the erasure request is another customer's: a wallet may only ask "
                           "for its own erasure")
    if request.get("node") != node_did:
        raise ErasureError("the erasure request is for another node; sign one for this "
                           "node's DID")
    issued = _time(request.get("issued"))
    now = now or datetime.now(UTC)
    if issued > now + clock_skew:
        raise ErasureError("the erasure request is issued in the future; check the clock")
    if issued < now - MAX_REQUEST_AGE:
        raise ErasureError("the erasure request is older than 30 days; sign a new one")
    return signer


def sign_proof(statement: dict[str, Any], identity: Identity) -> dict[str, Any]:
    """The node's signed proof (Ed25519; the SM2 chain too with a gm identity)."""
    return sign_document({"type": PROOF_TYPE, "v": VERSION, **statement}, identity)


def proof_digest(proof: Mapping[str, Any]) -> str:
    return canonical_sha256(dict(proof))


def verify_proof(proof: Any, *, node_did: str | None = None, customer: str | None = None,
                 request: Mapping[str, Any] | None = None) -> str:
    """The signing node's DID of a valid proof, checked against what the caller knows;
    ``ErasureError`` naming the first defect otherwise."""
    if not isinstance(proof, dict) or proof.get("type") != PROOF_TYPE \
            or proof.get("v") != VERSION:
        raise ErasureError("not an ErasureProof document")
    if set(proof) != PROOF_FIELDS:
        raise ErasureError("the erasure proof's fields are not the protocol's")
    try:
        signer = verify_document(proof)
    except ConsentError as exc:
        raise ErasureError(f"the erasure proof's signature does not verify ({exc})") from None
    if proof["node"] != signer:
        raise ErasureError("the erasure proof is not signed by the node it names")
    if node_did is not None and signer != node_did:
        raise ErasureError("the erasure proof is signed by another node")
    if customer is not None and proof["customer"] != customer:
        raise ErasureError("the erasure proof is for another customer")
    if request is not None and proof["request"] != request_hash(request):
        raise ErasureError("the erasure proof answers another request")
    if not isinstance(proof["locations"], list) or not isinstance(proof["scan"], dict):
        raise ErasureError("the erasure proof's locations or scan are malformed")
    return signer


def scan_hits(proof: Mapping[str, Any]) -> int:
    return sum(int(f.get("hits", 0)) for f in proof.get("scan", {}).get("files", []))


def ledger_entry(proof: Mapping[str, Any], commitment: str) -> dict[str, Any]:
    """The (unsigned) ``erasure`` entry for a proof; the node signs it as its author."""
    if not _HEX64.fullmatch(commitment):
        raise ErasureError("a subject commitment is 64 hex digits")
    return make_event("erasure", proof_digest=proof_digest(proof),
                      subject_commitment=commitment, node=str(proof["node"]),
                      time=_time(proof["erased_at"]))


def check_entry(proof: Mapping[str, Any], event: Mapping[str, Any]) -> None:
    """The ledger ``erasure`` entry names this proof and its node."""
    if event.get("type") != "erasure":
        raise ErasureError("the ledger entry is not an erasure entry")
    if event.get("proof_digest") != proof_digest(proof):
        raise ErasureError("the ledger entry names another proof (the proof was changed)")
    if event.get("node") != proof.get("node"):
        raise ErasureError("the ledger entry names another node than the proof")


def _time(value: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ErasureError("a time must be RFC 3339 UTC, e.g. 2026-01-01T00:00:00Z") from None
    if moment.tzinfo is None:
        raise ErasureError("a time must carry its zone (end it with Z)")
    return moment
