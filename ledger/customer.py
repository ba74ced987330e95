"""A customer's own ledger entries: the protocol the wallet and the node both speak.

For each grant the wallet derives a **per-grant key** (``grant_key``: an Ed25519 key from
HMAC-SHA256 of the wallet's own seed and the grant id, so nothing new is stored and nobody
without the wallet's key can link two grants' keys), binds its did:key inside the signed
grant (``credentialSubject.ledgerKey``) and signs the grant's ledger entry with it
(``grant_entry``; later the revocation's, ``revocation_entry``). The entry names the node as
``endorser``; the wallet sends it with the grant (SubmitGrant ``ledger_entry``) or the
revocation (Revoke ``ledger_entry``), and the node, which knows the grant, the customer and
their salt, checks that the entry says exactly what it accepted (``check_customer_entry``)
before it signs the endorsement (``ledger_endorsement`` in its reply). The ledger then takes
the entry on the node's authority (``ledger.authority``), without ever seeing the
customer's DID.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from consent.identity import Identity
from ledger.authority import endorsement_of, verify_author
from ledger.errors import EventError, LedgerError
from ledger.events import encode_event, format_time, make_event, subject_commitment

KEY_DOMAIN = b"sovereign-fabric/ledger-key/v1\n"


class EndorsementRefused(LedgerError):
    """The node will not endorse a customer's entry: it does not say what the node accepted."""


def grant_key(identity: Identity, grant_id: str) -> Identity:
    """The per-grant ledger key of ``grant_id`` for the wallet holding ``identity``."""
    seed = hmac.new(bytes(identity.signing_key), KEY_DOMAIN + grant_id.encode(),
                    hashlib.sha256).digest()
    return Identity.from_seed(seed)


def grant_entry(grant: Any, commitment: str, node_did: str) -> dict[str, Any]:
    """The (unsigned) ledger entry of a verified ``consent.grants.Grant`` accepted by a node."""
    return make_event(
        "grant", grant_digest=grant.digest, subject_commitment=commitment,
        purpose=grant.purpose, scopes=sorted(str(s) for s in grant.scopes),
        requester=grant.requester, nodes=list(grant.nodes), expires=format_time(grant.expires),
        endorser=node_did,
    )


def revocation_entry(
    revocation_digest: str, grant_digest: str, commitment: str, node_did: str
) -> dict[str, Any]:
    """The (unsigned) ledger entry of a revocation delivered to ``node_did``."""
    return make_event(
        "revocation", revocation_digest=revocation_digest, grant_digest=grant_digest,
        subject_commitment=commitment, node=node_did, endorser=node_did,
    )


def endorse(
    entry: Any, expected: Mapping[str, Any], ledger_key: str | None, node: Identity
) -> str:
    """The node's endorsement (hex) of the customer's signed ``entry``, or
    ``EndorsementRefused`` saying why.

    ``expected`` is the entry the node builds from what it accepted (``grant_entry`` or
    ``revocation_entry``); the customer's may differ only in its ``time``. ``ledger_key`` is
    the did:key the grant binds: the entry must be signed by it.
    """
    if not isinstance(entry, dict):
        raise EndorsementRefused("ledger_entry must be the signed entry as a JSON object")
    if ledger_key is None:
        raise EndorsementRefused("the grant binds no ledgerKey, so its entries cannot be shown "
                                 "to be the customer's: sign a new grant with a current wallet")
    fields = set(expected) | {"author", "signature"}
    if set(entry) != fields or any(entry[k] != v for k, v in expected.items() if k != "time"):
        raise EndorsementRefused("ledger_entry does not record what this node accepted: build "
                                 "it from the grant (ledger.customer)")
    if entry["author"] != ledger_key:
        raise EndorsementRefused("ledger_entry is not signed with the grant's ledgerKey")
    try:
        verify_author(entry, encode_event(entry))
    except (EventError, LedgerError) as exc:
        raise EndorsementRefused(f"ledger_entry is not acceptable: {exc}") from exc
    return endorsement_of(entry, node)


__all__ = [
    "EndorsementRefused",
    "endorse",
    "grant_entry",
    "grant_key",
    "revocation_entry",
    "subject_commitment",
]
