"""Consent grants and revocations as W3C Verifiable Credentials (VC Data Model 2.0).

A grant is issued by the data subject (its ``issuer`` is the customer's did:key) to one
requester (``credentialSubject.id``), for exactly one purpose from a controlled vocabulary,
one or more scope tiers, named nodes, and a window of at most 72 hours from issue (the
dynamic-authorisation rule; a node's policy may be stricter). It is secured with an
``eddsa-jcs-2022`` Data Integrity proof (plus SM2 in the ``gm`` profile), so third-party VC
tooling can verify it. The ledger records only ``Grant.digest``, never the grant itself.
"""

from __future__ import annotations

import difflib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from consent.canonical import canonical_sha256
from consent.did import resolve
from consent.errors import (
    DIDError,
    GrantError,
    GrantExpired,
    GrantNotYetValid,
    GrantWindowTooLong,
    RevocationError,
    SignatureError,
    UnknownPurpose,
    UnknownScope,
)
from consent.identity import Identity
from consent.integrity import format_time, sign_document, verify_document

VC_CONTEXT = "https://www.w3.org/ns/credentials/v2"
CONSENT_CONTEXT = "https://w3id.org/sovereign-fabric/consent/v1"
GRANT_TYPE = "ConsentGrant"
REVOCATION_TYPE = "ConsentRevocation"
MAX_TTL = timedelta(hours=72)
DEFAULT_CLOCK_SKEW = timedelta(minutes=5)
MAX_CLOCK_SKEW = timedelta(minutes=30)
MAX_PURPOSE_TEXT = 500


class Scope(StrEnum):
    """Scope tiers of customer data, from most to least identifying."""

    IDENTITY = "identity"
    TRANSACTION = "transaction"
    SENTIMENT = "sentiment"


PURPOSES: dict[str, str] = {
    "quote-generation": "prepare a price quote for the customer",
    "renewal-warning": "warn before a contract or subscription renews",
    "intent-model-training": "train a federated purchase-intent model",
    "churn-analysis": "estimate the risk that customers leave",
    "service-improvement": "improve the service from aggregate usage",
    "fraud-prevention": "detect and prevent fraud",
    "marketing-analytics": "measure marketing campaigns in aggregate",
}


def suggest_purposes(purpose: str, limit: int = 3) -> list[str]:
    """The known purposes closest to a mistyped one."""
    return difflib.get_close_matches(purpose, list(PURPOSES), n=limit, cutoff=0.4)


def check_purpose(purpose: Any) -> str:
    if not isinstance(purpose, str):
        raise UnknownPurpose(f"the purpose must be a string: one of {', '.join(PURPOSES)}")
    if purpose not in PURPOSES:
        hint = suggest_purposes(purpose)
        tail = f" Did you mean: {', '.join(hint)}?" if hint else ""
        raise UnknownPurpose(
            f"unknown purpose {purpose!r}: use one of {', '.join(PURPOSES)}.{tail}"
        )
    return purpose


def parse_scopes(values: list[str] | tuple[str, ...]) -> frozenset[Scope]:
    if not values:
        raise UnknownScope("a grant needs at least one scope: identity, transaction or sentiment")
    scopes = set()
    for value in values:
        try:
            scopes.add(Scope(value))
        except ValueError:
            raise UnknownScope(
                f"unknown scope {value!r}: use identity, transaction or sentiment"
            ) from None
    return frozenset(scopes)


def _parse_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise GrantError(f"the grant's {name} must be an ISO 8601 date-time string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise GrantError(f"the grant's {name} {value!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        raise GrantError(f"the grant's {name} must be in UTC (end it with Z)")
    return moment


def _check_did(value: Any, role: str) -> str:
    try:
        resolve(value)
    except DIDError as exc:
        raise GrantError(f"the {role} is not a valid did:key: {exc}") from exc
    return value


@dataclass(frozen=True)
class Grant:
    """A verified grant. Only ``verify_grant`` builds one from a credential."""

    id: str
    subject: str
    requester: str
    nodes: tuple[str, ...]
    purpose: str
    purpose_text: str
    scopes: frozenset[Scope]
    issued: datetime
    not_before: datetime
    expires: datetime
    max_queries: int | None
    dp_epsilon: float | None
    nonce: str
    digest: str
    credential: dict[str, Any]
    ledger_key: str | None = None  # did:key signing this grant's ledger entries, if bound

    def is_active(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        return self.not_before <= now < self.expires

    def covers(
        self, requester: str, purpose: str, scopes: set[Scope] | frozenset[Scope], node_did: str
    ) -> bool:
        """True when this grant lets ``requester`` use ``scopes`` for ``purpose`` at the node."""
        return (
            requester == self.requester
            and purpose == self.purpose
            and node_did in self.nodes
            and set(scopes) <= self.scopes
        )


def issue_grant(
    identity: Identity,
    *,
    requester: str,
    nodes: list[str],
    purpose: str,
    scopes: list[str],
    ttl: timedelta,
    purpose_text: str = "",
    not_before: datetime | None = None,
    max_queries: int | None = None,
    dp_epsilon: float | None = None,
    now: datetime | None = None,
    grant_id: str | None = None,
    ledger_key: str | None = None,
) -> dict[str, Any]:
    """Sign a grant; every rule that ``verify_grant`` enforces is checked before signing.

    ``ledger_key`` is the did:key of the per-grant key that signs this grant's ledger entries
    (``ledger.customer``), bound here as ``credentialSubject.ledgerKey``; ``grant_id`` (a
    ``urn:uuid:``) lets the wallet derive that key before the grant exists.
    """
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    start = (not_before or issued).replace(microsecond=0)
    expires = start + ttl
    if ttl <= timedelta(0):
        raise GrantError("the grant's duration must be positive")
    if expires - issued > MAX_TTL:
        raise GrantWindowTooLong("a grant may last at most 72 hours after it is issued")
    subject_fields: dict[str, Any] = {
        "id": _check_did(requester, "requester"),
        "nodes": [_check_did(node, "node") for node in nodes],
        "purpose": check_purpose(purpose),
        "purposeText": purpose_text,
        "scopes": sorted(parse_scopes(scopes)),
        "issued": format_time(issued),
        "nonce": secrets.token_hex(16),
    }
    if max_queries is not None:
        subject_fields["maxQueries"] = max_queries
    if dp_epsilon is not None:
        subject_fields["dpEpsilon"] = dp_epsilon
    if ledger_key is not None:
        subject_fields["ledgerKey"] = _check_did(ledger_key, "ledger key")
    credential = {
        "@context": [VC_CONTEXT, CONSENT_CONTEXT],
        "id": grant_id or f"urn:uuid:{uuid.uuid4()}",
        "type": ["VerifiableCredential", GRANT_TYPE],
        "issuer": identity.did,
        "validFrom": format_time(start),
        "validUntil": format_time(expires),
        "credentialSubject": subject_fields,
    }
    grant = _parse_grant(credential)  # the checks a verifier runs, before anything is signed
    _check_window(grant, DEFAULT_CLOCK_SKEW)
    return sign_document(credential, identity, created=issued)


def _check_vc_context(document: dict[str, Any], error: type[Exception] = GrantError) -> None:
    context = document.get("@context")
    if not isinstance(context, list) or not context or context[0] != VC_CONTEXT:
        raise error(f"the @context must be a list starting with {VC_CONTEXT}")


def _parse_grant(credential: dict[str, Any]) -> Grant:
    if not isinstance(credential, dict):
        raise GrantError("a grant must be a JSON object")
    _check_vc_context(credential)
    types = credential.get("type")
    if not isinstance(types, list) or GRANT_TYPE not in types:
        raise GrantError("the credential is not a ConsentGrant")
    if "VerifiableCredential" not in types:
        raise GrantError("a grant's type must include VerifiableCredential (VC Data Model 2.0)")
    body = credential.get("credentialSubject")
    if not isinstance(body, dict):
        raise GrantError("the grant has no credentialSubject")
    nodes = body.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise GrantError("the grant must name at least one node")
    max_queries = body.get("maxQueries")
    if max_queries is not None and (type(max_queries) is not int or max_queries < 1):
        raise GrantError("maxQueries must be a positive whole number")
    epsilon = body.get("dpEpsilon")
    if epsilon is not None and (
        isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0 < epsilon <= 10
    ):
        raise GrantError("dpEpsilon must be a number in (0, 10]")
    purpose_text = body.get("purposeText", "")
    if not isinstance(purpose_text, str) or len(purpose_text) > MAX_PURPOSE_TEXT:
        raise GrantError(f"purposeText must be a string of at most {MAX_PURPOSE_TEXT} characters")
    grant_id = credential.get("id")
    if not isinstance(grant_id, str) or not grant_id.startswith("urn:uuid:"):
        raise GrantError("the grant id must be a urn:uuid")
    nonce = body.get("nonce")
    if not isinstance(nonce, str) or len(nonce) < 16:
        raise GrantError("the grant needs a random nonce of at least 16 characters")
    scopes = body.get("scopes")
    if not isinstance(scopes, list):
        raise UnknownScope("scopes must be a list of identity, transaction, sentiment")
    return Grant(
        id=grant_id,
        subject=_check_did(credential.get("issuer"), "issuer"),
        requester=_check_did(body.get("id"), "requester"),
        nodes=tuple(_check_did(node, "node") for node in nodes),
        purpose=check_purpose(body.get("purpose", "")),
        purpose_text=purpose_text,
        scopes=parse_scopes(scopes),
        issued=_parse_time(body.get("issued"), "issue time"),
        not_before=_parse_time(credential.get("validFrom"), "validFrom"),
        expires=_parse_time(credential.get("validUntil"), "validUntil"),
        max_queries=max_queries,
        dp_epsilon=float(epsilon) if epsilon is not None else None,
        nonce=nonce,
        digest=canonical_sha256(credential),
        credential=credential,
        ledger_key=(None if body.get("ledgerKey") is None
                    else _check_did(body["ledgerKey"], "ledger key")),
    )


def _proof_purposes(document: dict[str, Any]) -> set[Any]:
    proof = document.get("proof")
    proofs = proof if isinstance(proof, list) else [proof]
    return {p.get("proofPurpose") for p in proofs if isinstance(p, dict)}


def _check_window(grant: Grant, clock_skew: timedelta, max_ttl: timedelta = MAX_TTL) -> None:
    """The rules on the grant's own times, independent of the verifier's clock."""
    if grant.expires <= grant.not_before:
        raise GrantError("the grant expires before it becomes valid")
    if grant.not_before < grant.issued - clock_skew:
        raise GrantError("the grant's validFrom lies before its issue time")
    limit = min(max_ttl, MAX_TTL)
    if grant.expires - grant.issued > limit:
        hours = int(limit.total_seconds() // 3600)
        raise GrantWindowTooLong(f"the grant stays valid more than {hours} hours after issue")


def verify_grant(
    credential: dict[str, Any],
    *,
    now: datetime | None = None,
    max_ttl: timedelta = MAX_TTL,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    require_sm2: bool = False,
) -> Grant:
    """Check the proof, the schema and the validity window; return the grant or raise.

    ``max_ttl`` is the verifier's policy and can only tighten the 72-hour rule;
    ``require_sm2`` is a ``gm``-profile verifier's policy that an SM2 proof is present.
    """
    now = now or datetime.now(UTC)
    if not timedelta(0) <= clock_skew <= MAX_CLOCK_SKEW:
        raise ValueError("clock_skew must be between 0 and 30 minutes")
    signer = verify_document(credential, require_sm2=require_sm2)
    grant = _parse_grant(credential)
    if _proof_purposes(credential) != {"assertionMethod"}:
        raise SignatureError("a grant's proofs must have proofPurpose assertionMethod")
    if signer != grant.subject:
        raise SignatureError("the grant is signed by someone other than its issuer")
    _check_window(grant, clock_skew, max_ttl)
    if grant.issued > now + clock_skew:
        raise GrantNotYetValid("the grant claims to be issued in the future: check the clocks")
    if now + clock_skew < grant.not_before:
        raise GrantNotYetValid(f"the grant is not valid before {format_time(grant.not_before)}")
    # Validity counts from the moment the verifier accepts the grant: an issue time up to
    # clock_skew in the future must not stretch it past the 72-hour (or policy) limit.
    limit = min(max_ttl, MAX_TTL)
    if grant.expires - now > limit:
        hours = int(limit.total_seconds() // 3600)
        raise GrantWindowTooLong(
            f"the grant would stay valid more than {hours} hours from now (it is dated in the "
            "future): check the clocks, or grant a shorter time")
    # Skew is tolerated for start times only: the customer's expiry is a hard limit.
    if now >= grant.expires:
        raise GrantExpired(f"the grant expired at {format_time(grant.expires)}")
    return grant


@dataclass(frozen=True)
class Revocation:
    grant_id: str
    subject: str
    issued: datetime
    reason: str
    digest: str
    document: dict[str, Any]


def _check_grant_id(grant_id: Any) -> str:
    if not isinstance(grant_id, str) or not grant_id.startswith("urn:uuid:"):
        raise RevocationError("the revocation must name a grant id (urn:uuid:...)")
    return grant_id


def issue_revocation(
    identity: Identity, grant_id: str, *, reason: str = "", now: datetime | None = None
) -> dict[str, Any]:
    """A signed statement by the subject that ``grant_id`` no longer holds."""
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    _check_grant_id(grant_id)
    statement = {
        "@context": [VC_CONTEXT, CONSENT_CONTEXT],
        "id": f"urn:uuid:{uuid.uuid4()}",
        "type": [REVOCATION_TYPE],
        "issuer": identity.did,
        "grant": grant_id,
        "issued": format_time(issued),
        "reason": reason[:MAX_PURPOSE_TEXT],
    }
    return sign_document(statement, identity, created=issued)


def verify_revocation(document: dict[str, Any], *, require_sm2: bool = False) -> Revocation:
    """Verify a revocation's proof and shape. The caller checks it matches the grant's subject.

    ``require_sm2`` is a ``gm``-profile verifier's policy that an SM2 proof is present.
    """
    if not isinstance(document, dict) or document.get("type") != [REVOCATION_TYPE]:
        raise RevocationError("the statement is not a ConsentRevocation")
    _check_vc_context(document, RevocationError)
    try:
        signer = verify_document(document, require_sm2=require_sm2)
    except SignatureError as exc:
        raise RevocationError(f"the revocation's signature is invalid: {exc}") from exc
    if signer != document.get("issuer"):
        raise RevocationError("the revocation is signed by someone other than its issuer")
    grant_id = _check_grant_id(document.get("grant"))
    try:
        issued = _parse_time(document.get("issued"), "issue time")
    except GrantError as exc:
        raise RevocationError(str(exc)) from exc
    return Revocation(
        grant_id=grant_id,
        subject=signer,
        issued=issued,
        reason=str(document.get("reason", "")),
        digest=canonical_sha256(document),
        document=document,
    )
