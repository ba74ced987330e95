"""Who may write what to the ledger: entry signatures, node endorsements and the append rules.

Every new entry names its ``author`` (a did:key) and carries ``signature``, an Ed25519
signature (128 lowercase hex digits) by that key over the **signing input**::

    b"sovereign-fabric/ledger-entry/v1\\n" || RFC 8785 JSON of the event without the fields
                                            "signature" and "endorsement"

Nothing else is needed to check an entry offline: the did:key is the public key, and the
entry in a receipt is already RFC 8785 JSON (so the verifier drops two fields, re-serialises
and verifies one signature). A detached signature over canonical bytes was chosen over an
``eddsa-jcs-2022`` proof object: one hash input instead of two, no proof options to check,
and 150 bytes per entry instead of about 400.

The rules (``check_entry``), applied by the ledger service to every entry before anything is
written, and by ``sov-audit verify`` to every receipt:

- A **party** (a node or the coordinator, registered by the operator with
  ``sov-ledger authors add``) signs its own entries, and only of the kinds it was registered
  for. An ``access_head`` or ``erasure`` entry must name its author as its ``node``.
- A **customer's** entries (``grant``, ``revocation``) are signed with a per-grant key whose
  did:key the customer's wallet binds inside the signed grant (``credentialSubject.ledgerKey``)
  and used for nothing else, so the ledger never sees the customer's DID and two grants'
  entries cannot be linked. The ledger cannot know such a key, so the entry must also carry
  the ``endorser`` (a registered node named in the entry: in ``nodes`` of a grant, as ``node``
  of a revocation) and its ``endorsement``, the node's signature over the same signing input,
  which the node gives only for a grant it accepted (``agent_node.service``). An officer or
  customer holding the grant checks that the entry's author is the grant's ``ledgerKey``
  (``check_customer_entry``).

Anything else is refused: :class:`~ledger.errors.Unauthenticated` (no signature, or one that
does not verify) or :class:`~ledger.errors.PermissionDenied` (unknown author, kind not
allowed, wrong node, missing endorsement). Entry signatures are Ed25519 in both crypto
profiles; in ``gm`` the log's tree heads carry SM2 as well (``ledger.note``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nacl.exceptions

from consent.canonical import canonicalize
from consent.did import resolve
from consent.errors import DIDError
from consent.identity import Identity
from ledger.authors import Author
from ledger.errors import AuthorityError, EventError, PermissionDenied, Unauthenticated
from ledger.events import encode_event

DOMAIN = b"sovereign-fabric/ledger-entry/v1\n"
SIGNATURE_FIELDS = ("signature", "endorsement")
CUSTOMER_KINDS = frozenset({"grant", "revocation"})
NODE_NAMED_KINDS = frozenset({"access_head", "erasure"})
# In a validated canonical entry these keys are never first (``schema_version`` sorts before
# ``signature``, ``author`` before ``endorsement``) and no value can hold a quote, so each
# appears exactly once, as a key, preceded by a comma: cutting it out yields the canonical
# JSON of the event without it, with no re-encoding on the append path.
_CUTS = tuple(f',"{name}":"'.encode() for name in SIGNATURE_FIELDS)
_HEX_SIGNATURE = 128 + 1  # the value's digits and its closing quote


@dataclass(frozen=True)
class Authority:
    """Who wrote a verified entry: its author and, for a customer's entry, the endorsing node."""

    author: str
    endorser: str | None = None


def signing_input(event: Mapping[str, Any]) -> bytes:
    """What the author and the endorser sign: the domain line, then the event's RFC 8785 JSON
    without ``signature`` and ``endorsement``."""
    unsigned = {k: v for k, v in event.items() if k not in SIGNATURE_FIELDS}
    return DOMAIN + canonicalize(unsigned)


def signing_input_of_entry(entry: bytes) -> bytes:
    """``signing_input`` of a validated canonical entry (``ledger.events.encode_event`` output),
    by cutting the two signature fields out of its bytes."""
    for key in _CUTS:
        at = entry.find(key)
        if at >= 0:
            entry = entry[:at] + entry[at + len(key) + _HEX_SIGNATURE:]
    return DOMAIN + entry


def _sign(event: Mapping[str, Any], identity: Identity) -> str:
    return identity.sign(signing_input(event)).hex()


def sign_entry(event: Mapping[str, Any], identity: Identity) -> dict[str, Any]:
    """``event`` with ``author`` set to ``identity``'s DID and signed by it."""
    unsigned = {k: v for k, v in event.items() if k not in SIGNATURE_FIELDS}
    unsigned["author"] = identity.did
    return {**unsigned, "signature": _sign(unsigned, identity)}


def endorse_entry(event: Mapping[str, Any], identity: Identity) -> dict[str, Any]:
    """A customer's signed entry with the endorsement of the node it names as ``endorser``."""
    if event.get("endorser") != identity.did:
        raise PermissionDenied("the entry names another node as its endorser")
    return {**event, "endorsement": _sign(event, identity)}


def endorsement_of(event: Mapping[str, Any], identity: Identity) -> str:
    """Just the endorsement signature (hex), as a node hands it back to the wallet."""
    return endorse_entry(event, identity)["endorsement"]


def _verify(did: str, message: bytes, signature_hex: str, what: str) -> None:
    try:
        key = resolve(did).ed25519
        if key is None:
            raise DIDError("not an Ed25519 did:key")
        key.verify(message, bytes.fromhex(signature_hex))
    except (DIDError, ValueError, nacl.exceptions.BadSignatureError) as exc:
        raise Unauthenticated(
            f"the {what} signature does not verify over this entry: it is forged, or was made "
            "for a different entry"
        ) from exc


def verify_author(event: Mapping[str, Any], entry: bytes) -> str:
    """Verify just the author's signature of a validated event (its canonical bytes
    ``entry``); return the author's DID. Raises ``Unauthenticated``."""
    author, signature = event.get("author"), event.get("signature")
    if not isinstance(author, str) or not isinstance(signature, str):
        raise Unauthenticated("the entry carries no author signature")
    _verify(author, signing_input_of_entry(entry), signature, "author's")
    return author


def _kinds(author: Author) -> str:
    return ", ".join(sorted(author.kinds)) or "nothing"


def check_entry(
    event: Mapping[str, Any], entry: bytes, authors: Mapping[str, Author] | None
) -> Authority:
    """Apply the rules above to a validated event and its canonical bytes ``entry``.

    ``authors`` maps DIDs to registered parties; ``None`` skips the registration checks (an
    offline verifier without the operator's authors file still checks every signature and
    the node rules). Raises ``Unauthenticated`` or ``PermissionDenied``.
    """
    author, signature = event.get("author"), event.get("signature")
    if author is None or signature is None:
        raise Unauthenticated(
            "the entry carries no author signature: every entry must be signed by its author "
            "(ledger.authority.sign_entry), a party registered with 'sov-ledger authors add'"
        )
    message = signing_input_of_entry(entry)
    _verify(author, message, signature, "author's")
    kind = event["type"]
    endorsed = "endorser" in event or "endorsement" in event
    if authors is not None and author in authors:
        party = authors[author]
        if endorsed:
            raise PermissionDenied(f"an entry by the registered {party.role} {party.name!r} "
                                   "carries no endorsement: remove endorser and endorsement")
        if kind not in party.kinds:
            raise PermissionDenied(f"the {party.role} {party.name!r} may not write {kind} "
                                   f"entries (it may write: {_kinds(party)})")
    elif authors is not None and not endorsed:
        raise PermissionDenied(
            f"the author {author} is not registered with this ledger: the operator registers "
            "nodes and the coordinator with 'sov-ledger authors add'"
        )
    if kind in NODE_NAMED_KINDS and event.get("node") != author:
        raise PermissionDenied(f"a {kind} entry may be written only by the node it names")
    if not endorsed:
        return Authority(author)
    return Authority(author, _check_endorsement(event, message, authors))


def _check_endorsement(
    event: Mapping[str, Any], message: bytes, authors: Mapping[str, Author] | None
) -> str:
    kind, endorser = event["type"], event.get("endorser")
    if kind not in CUSTOMER_KINDS:
        raise PermissionDenied(
            f"a {kind} entry cannot be endorsed: only a registered party may write it"
        )
    if endorser is None or "endorsement" not in event:
        raise PermissionDenied(
            f"a customer's {kind} entry needs the endorsement of the node that accepted the "
            "grant (endorser and endorsement)"
        )
    named = event.get("nodes", []) if kind == "grant" else [event.get("node")]
    if endorser not in named:
        raise PermissionDenied(f"the endorser of a {kind} entry must be the node it names")
    if authors is not None:
        party = authors.get(endorser)
        if party is None:
            raise PermissionDenied(f"the endorsing node {endorser} is not registered with this "
                                   "ledger: the operator registers it with 'sov-ledger authors "
                                   "add'")
        if kind not in party.kinds:
            raise PermissionDenied(f"the {party.role} {party.name!r} may not endorse {kind} "
                                   f"entries (it may write: {_kinds(party)})")
    _verify(endorser, message, event["endorsement"], "endorsing node's")
    return str(endorser)


def check_customer_entry(event: Mapping[str, Any], grant: Any) -> None:
    """Check that a verified customer entry belongs to ``grant`` (a verified
    ``consent.grants.Grant``): same grant digest, written with the grant's own ledger key.

    What an officer or the customer holding the grant checks; raises ``PermissionDenied``.
    """
    if event.get("grant_digest") != grant.digest:
        raise PermissionDenied("the entry is about another grant (its grant_digest differs)")
    if grant.ledger_key is None:
        raise PermissionDenied("the grant binds no ledger key, so no entry can be shown to be "
                               "its customer's")
    if event.get("author") != grant.ledger_key:
        raise PermissionDenied("the entry was not written with the grant's ledger key: it is "
                               "not the customer's")


__all__ = [
    "CUSTOMER_KINDS",
    "DOMAIN",
    "Authority",
    "authorize",
    "check_customer_entry",
    "check_entry",
    "endorse_entry",
    "endorsement_of",
    "sign_entry",
    "signing_input",
    "signing_input_of_entry",
    "verify_author",
]


def authorize(events: Sequence[Mapping[str, Any]], authors: Mapping[str, Author]) -> list[bytes]:
    """Validate, encode and check every event of a batch; the canonical entries to append.

    Raises (naming the event's position) ``EventError``, ``Unauthenticated`` or
    ``PermissionDenied`` for the first event that fails; then nothing may be appended.
    """
    entries = []
    for position, event in enumerate(events):
        try:
            entry = encode_event(event)
            check_entry(event, entry, authors)
        except (EventError, AuthorityError) as exc:
            raise type(exc)(f"event {position}: {exc}") from exc
        entries.append(entry)
    return entries
