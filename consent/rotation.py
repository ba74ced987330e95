"""Node key rotation statements: how a node moves to a new did:key without its customers'
wallets taking it for an impostor.

A ``NodeKeyRotation`` statement says "the node that was ``previous`` is now ``did``". It is a
JSON document with an ``eddsa-jcs-2022`` Data Integrity proof (``consent.integrity``) made
with the **old** key, so only the holder of the key a wallet pinned can hand its trust over::

    {"type": "NodeKeyRotation", "v": 1, "previous": "did:key:z6Mk…old",
     "did": "did:key:z6Mk…new", "issued": "2026-12-04T10:00:00Z", "proof": [...]}

The node keeps every statement it made (``sov-node rotate-key``) and serves them in its signed
NodeInfo (``rotations``); a wallet that pinned ``previous`` follows a chain of them to the DID
the node presents now (``follow``), and refuses any other change of DID unless its owner says
``consent-wallet nodes trust ADDRESS --new-did DID``. Both sides import this module.

It also defines the node's self-signed ``NodeIdentity`` document (``sov-node identity``): an
operator publishes it so that wallets pin the node's DID before the first contact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consent.did import resolve
from consent.errors import ConsentError, DIDError, RotationError
from consent.identity import Identity
from consent.integrity import format_time, sign_document, verify_document

ROTATION_TYPE = "NodeKeyRotation"
VERSION = 1
MAX_CHAIN = 64  # statements a wallet follows in one go; a node rotating more is suspicious


@dataclass(frozen=True)
class Rotation:
    previous: str
    did: str
    issued: str


def issue_rotation(old: Identity, new_did: str, now: datetime | None = None) -> dict[str, Any]:
    """The statement, signed by ``old``, that the node's DID is now ``new_did``."""
    _check_did(new_did)
    if new_did == old.did:
        raise RotationError("a key rotation must name a new DID, not the current one")
    document = {"type": ROTATION_TYPE, "v": VERSION, "previous": old.did, "did": new_did,
                "issued": format_time((now or datetime.now(UTC)).replace(microsecond=0))}
    return sign_document(document, old)


def verify_rotation(document: Any) -> Rotation:
    """The rotation a statement makes, once its proof is checked to be by ``previous``."""
    if not isinstance(document, dict) or document.get("type") != ROTATION_TYPE \
            or document.get("v") != VERSION:
        raise RotationError(f"not a {ROTATION_TYPE} statement (version {VERSION})")
    previous, did = document.get("previous"), document.get("did")
    for value in (previous, did):
        _check_did(value)
    try:
        signer = verify_document(document)
    except ConsentError as exc:
        raise RotationError(f"the key rotation's proof does not verify ({exc})") from None
    if signer != previous:
        raise RotationError("the key rotation is not signed by the key it retires")
    return Rotation(str(previous), str(did), str(document.get("issued", "")))


def follow(pinned: str, presented: str, statements: Sequence[Any]) -> list[Rotation]:
    """The chain of verified rotations from ``pinned`` to ``presented`` (empty when equal);
    ``RotationError`` when the statements lead nowhere near it."""
    if pinned == presented:
        return []
    by_previous: dict[str, Rotation] = {}
    for document in list(statements)[:MAX_CHAIN * 4]:
        try:
            rotation = verify_rotation(document)
        except RotationError:
            continue  # a bad statement proves nothing; the chain must still be found
        by_previous.setdefault(rotation.previous, rotation)
    chain: list[Any] = []
    current = pinned
    while current != presented:
        step = by_previous.get(current)
        if step is None or len(chain) >= MAX_CHAIN:
            raise RotationError(f"no key rotation signed by {pinned} leads to {presented}")
        chain.append(step)
        current = step.did
    return chain


NODE_DOCUMENT_TYPE = "NodeIdentity"


def issue_node_document(identity: Identity, *, name: str, region: str,
                        now: datetime | None = None) -> dict[str, Any]:
    """A node's self-signed identity document (``sov-node identity``), for its operator to
    publish so that wallets pin its DID ahead of the first contact
    (``consent-wallet nodes add ADDRESS --ca FILE --node-doc FILE``)."""
    document = {"type": NODE_DOCUMENT_TYPE, "v": VERSION, "did": identity.did, "name": name,
                "region": region,
                "issued": format_time((now or datetime.now(UTC)).replace(microsecond=0))}
    return sign_document(document, identity)


def verify_node_document(document: Any) -> str:
    """The DID a node identity document pins, once its proof is checked to be by that DID."""
    if not isinstance(document, dict) or document.get("type") != NODE_DOCUMENT_TYPE \
            or document.get("v") != VERSION:
        raise RotationError(f"not a {NODE_DOCUMENT_TYPE} document (version {VERSION}): "
                            "get it from the node's operator (sov-node identity)")
    _check_did(document.get("did"))
    try:
        signer = verify_document(document)
    except ConsentError as exc:
        raise RotationError(f"the node document's proof does not verify ({exc})") from None
    if signer != document["did"]:
        raise RotationError("the node document is not signed by the DID it names")
    return str(signer)


def _check_did(value: Any) -> None:
    if not isinstance(value, str):
        raise RotationError("a key rotation names its DIDs as did:key strings")
    try:
        resolve(value)
    except DIDError as exc:
        raise RotationError(f"a key rotation names an invalid DID ({exc})") from None
