"""Consent grants and revocations (W3C VC Data Model 2.0 credentials with ``eddsa-jcs-2022``
proofs): issuance, verification and every rejection from the Foundation issue's "Bad input"
list, each with its own error class.

Forged credentials are built the way an attacker who holds a key would: edit the credential and
re-sign it with ``consent.integrity.sign_document``, so the proof is valid and only the grant
rules can refuse it.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from consent.canonical import canonical_sha256
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
    UnsupportedCryptosuite,
)
from consent.grants import (
    DEFAULT_CLOCK_SKEW,
    MAX_TTL,
    PURPOSES,
    Scope,
    issue_grant,
    issue_revocation,
    verify_grant,
    verify_revocation,
)
from consent.identity import Identity
from consent.integrity import sign_document, unsecured, verify_document

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SKEW = DEFAULT_CLOCK_SKEW
SECOND = timedelta(seconds=1)

SUBJECT = Identity.from_seed(bytes([1]) * 32)
REQUESTER = Identity.from_seed(bytes([2]) * 32)
NODE = Identity.from_seed(bytes([3]) * 32)
OTHER_NODE = Identity.from_seed(bytes([4]) * 32)
MALLORY = Identity.from_seed(bytes([5]) * 32)


def _issue(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "requester": REQUESTER.did,
        "nodes": [NODE.did],
        "purpose": "quote-generation",
        "scopes": ["transaction"],
        "ttl": timedelta(hours=24),
        "purpose_text": "quote for the spring order",
        "now": NOW,
    }
    arguments.update(overrides)
    return issue_grant(SUBJECT, **arguments)


def _forge(credential: dict[str, Any], signer: Identity = SUBJECT, **subject: Any) -> dict:
    """Edit then re-sign with a valid proof: only the grant rules stand in the way."""
    edited = copy.deepcopy(unsecured(credential))
    for name, value in subject.items():
        if name in ("validFrom", "validUntil", "issuer", "type"):  # else credentialSubject
            edited[name] = value
        else:
            edited["credentialSubject"][name] = value
    return sign_document(edited, signer, created=NOW)


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A rejected issue must write nothing: run it in an empty directory and look afterwards."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert os.listdir(tmp_path) == []


# --- issue and verify -------------------------------------------------------------------


def test_round_trip() -> None:
    credential = _issue(scopes=["transaction", "identity"], max_queries=10, dp_epsilon=0.5)
    grant = verify_grant(credential, now=NOW)

    assert verify_document(credential) == SUBJECT.did
    assert grant.subject == SUBJECT.did
    assert grant.requester == REQUESTER.did
    assert grant.nodes == (NODE.did,)
    assert grant.purpose == "quote-generation"
    assert grant.purpose_text == "quote for the spring order"
    assert grant.scopes == frozenset({Scope.TRANSACTION, Scope.IDENTITY})
    assert (grant.issued, grant.not_before, grant.expires) == (NOW, NOW, NOW + timedelta(hours=24))
    assert (grant.max_queries, grant.dp_epsilon) == (10, 0.5)
    assert grant.id.startswith("urn:uuid:") and grant.id == credential["id"]
    assert len(grant.nonce) >= 16
    assert grant.digest == canonical_sha256(credential)
    assert grant.credential == credential
    assert credential["type"] == ["VerifiableCredential", "ConsentGrant"]
    assert credential["proof"]["cryptosuite"] == "eddsa-jcs-2022"


def test_two_issues_differ_in_id_and_nonce() -> None:
    first, second = verify_grant(_issue(), now=NOW), verify_grant(_issue(), now=NOW)
    assert first.id != second.id and first.nonce != second.nonce
    assert first.digest != second.digest


def test_every_purpose_in_vocabulary_issues() -> None:
    for purpose in PURPOSES:
        assert verify_grant(_issue(purpose=purpose), now=NOW).purpose == purpose


def test_exactly_72_hours_is_allowed() -> None:
    grant = verify_grant(_issue(ttl=MAX_TTL), now=NOW)
    assert grant.expires - grant.issued == MAX_TTL


# --- 72-hour window ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "not_before"),
    [
        (MAX_TTL + SECOND, None),
        (timedelta(days=30), None),
        (MAX_TTL, NOW + timedelta(hours=1)),  # 72 h from a later start ends 73 h after issue
    ],
    ids=["72h+1s", "30d", "late-start"],
)
def test_issue_refuses_window_over_72h(
    empty_cwd: Path, ttl: timedelta, not_before: datetime | None
) -> None:
    credential = None
    with pytest.raises(GrantWindowTooLong, match="72 hours"):
        credential = _issue(ttl=ttl, not_before=not_before)
    assert credential is None


@pytest.mark.parametrize("ttl", [timedelta(0), -SECOND], ids=["zero", "negative"])
def test_issue_refuses_non_positive_ttl(empty_cwd: Path, ttl: timedelta) -> None:
    with pytest.raises(GrantError, match="positive"):
        _issue(ttl=ttl)


def test_verify_refuses_forged_over_long_grant() -> None:
    forged = _forge(_issue(), validUntil="2026-03-04T12:00:01Z")  # 72 h + 1 s after issue
    assert verify_document(forged) == SUBJECT.did  # the proof itself is fine
    with pytest.raises(GrantWindowTooLong, match="72 hours"):
        verify_grant(forged, now=NOW)


def test_node_policy_can_be_stricter() -> None:
    credential = _issue(ttl=timedelta(hours=48))
    assert verify_grant(credential, now=NOW, max_ttl=timedelta(hours=48)).purpose
    with pytest.raises(GrantWindowTooLong, match="24 hours"):
        verify_grant(credential, now=NOW, max_ttl=timedelta(hours=24))


def test_node_policy_cannot_loosen_72h() -> None:
    forged = _forge(_issue(), validUntil="2026-03-05T12:00:00Z")  # 96 h
    with pytest.raises(GrantWindowTooLong, match="72 hours"):
        verify_grant(forged, now=NOW, max_ttl=timedelta(days=30))


# --- validity window and clock skew ----------------------------------------------------------


def test_future_not_before() -> None:
    start = NOW + timedelta(hours=2)
    credential = _issue(not_before=start, ttl=timedelta(hours=1))
    with pytest.raises(GrantNotYetValid, match="not valid before"):
        verify_grant(credential, now=NOW)
    with pytest.raises(GrantNotYetValid):
        verify_grant(credential, now=start - SKEW - SECOND)
    assert verify_grant(credential, now=start - SKEW).not_before == start
    assert verify_grant(credential, now=start).is_active(start)


def test_expired() -> None:
    credential = _issue(ttl=timedelta(hours=1))
    expires = NOW + timedelta(hours=1)
    with pytest.raises(GrantExpired, match="expired"):
        verify_grant(credential, now=expires)
    with pytest.raises(GrantExpired):
        verify_grant(credential, now=NOW + timedelta(days=3))
    # Clock skew is tolerated for start times only: expiry is exact.
    grant = verify_grant(credential, now=expires - SECOND)
    assert not grant.is_active(expires)
    assert grant.is_active(expires - SECOND)


@pytest.mark.parametrize("skew", [timedelta(minutes=31), timedelta(seconds=-1)])
def test_clock_skew_is_bounded(skew: timedelta) -> None:
    with pytest.raises(ValueError, match="clock_skew"):
        verify_grant(_issue(), now=NOW, clock_skew=skew)


def test_grant_proof_purpose_must_be_assertion_method() -> None:
    forged = sign_document(unsecured(_issue()), SUBJECT, proof_purpose="authentication")
    with pytest.raises(SignatureError, match="assertionMethod"):
        verify_grant(forged, now=NOW)


def test_issued_in_the_future_beyond_skew() -> None:
    credential = _issue(now=NOW + SKEW + SECOND)
    with pytest.raises(GrantNotYetValid, match="future"):
        verify_grant(credential, now=NOW)


def test_issued_in_the_future_within_skew() -> None:
    credential = _issue(now=NOW + SKEW)
    assert verify_grant(credential, now=NOW).issued == NOW + SKEW


def test_validity_never_exceeds_72_hours_from_acceptance_at_the_edge() -> None:
    """Dated up to the skew in the future, a 72-hour grant would last 72 h + skew from the
    moment the node accepts it: refused; one ending exactly 72 h after acceptance passes."""
    credential = _issue(now=NOW + SKEW, ttl=MAX_TTL)
    with pytest.raises(GrantWindowTooLong, match="72 hours from now"):
        verify_grant(credential, now=NOW)
    with pytest.raises(GrantWindowTooLong, match="72 hours from now"):
        verify_grant(credential, now=NOW + SKEW - SECOND)
    assert verify_grant(credential, now=NOW + SKEW).expires - (NOW + SKEW) == MAX_TTL
    edge = _issue(now=NOW + SKEW, ttl=MAX_TTL - SKEW)
    assert verify_grant(edge, now=NOW).expires - NOW == MAX_TTL


def test_node_policy_bounds_validity_from_acceptance() -> None:
    credential = _issue(now=NOW + SECOND, ttl=timedelta(hours=24))
    with pytest.raises(GrantWindowTooLong, match="24 hours from now"):
        verify_grant(credential, now=NOW, max_ttl=timedelta(hours=24))


def test_custom_clock_skew_bounds() -> None:
    credential = _issue(not_before=NOW + timedelta(minutes=30), ttl=timedelta(hours=1))
    assert verify_grant(credential, now=NOW, clock_skew=timedelta(minutes=30))
    with pytest.raises(GrantNotYetValid):
        verify_grant(credential, now=NOW, clock_skew=timedelta(minutes=29))


def test_forged_valid_from_before_issue() -> None:
    forged = _forge(_issue(), validFrom="2026-03-01T11:54:59Z")  # issue - 5 min - 1 s
    with pytest.raises(GrantError, match="before its issue time"):
        verify_grant(forged, now=NOW)


def test_forged_expiry_before_start() -> None:
    forged = _forge(_issue(), validUntil="2026-03-01T12:00:00Z")
    with pytest.raises(GrantError, match="expires before"):
        verify_grant(forged, now=NOW)


def test_issue_refuses_backdated_start(empty_cwd: Path) -> None:
    # issue_grant promises to check every rule verify_grant enforces before signing; a start
    # an hour before the issue time is refused by verify_grant, so it must be refused here.
    with pytest.raises(GrantError):
        _issue(not_before=NOW - timedelta(hours=1), ttl=timedelta(hours=2))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("validUntil", "2026-03-02"),
        ("validUntil", "2026-03-02T12:00:00"),
        ("validUntil", 1772452800),
        ("issued", "yesterday"),
    ],
    ids=["date-only", "no-timezone", "epoch-number", "not-a-date"],
)
def test_forged_bad_times(field: str, value: Any) -> None:
    forged = _forge(_issue(), **{field: value})
    with pytest.raises(GrantError):
        verify_grant(forged, now=NOW)


# --- purposes and scopes -----------------------------------------------------------------


def test_unknown_purpose_suggests(empty_cwd: Path) -> None:
    with pytest.raises(UnknownPurpose) as info:
        _issue(purpose="quote-generaton")
    message = str(info.value)
    assert "Did you mean: quote-generation" in message
    assert "renewal-warning" in message  # the whole vocabulary is listed


@pytest.mark.parametrize("purpose", ["", "QUOTE-GENERATION", "anything goes"])
def test_unknown_purpose_refused(empty_cwd: Path, purpose: str) -> None:
    with pytest.raises(UnknownPurpose):
        _issue(purpose=purpose)


def test_forged_unknown_purpose_refused_at_verify() -> None:
    forged = _forge(_issue(), purpose="resale-to-brokers")
    with pytest.raises(UnknownPurpose):
        verify_grant(forged, now=NOW)


@pytest.mark.parametrize(
    "scopes",
    [["transaction", "location"], [], ["Identity"], "identity"],
    ids=["unknown-tier", "empty", "wrong-case", "string-not-list"],
)
def test_unknown_scope_refused(empty_cwd: Path, scopes: Any) -> None:
    with pytest.raises(UnknownScope):
        _issue(scopes=scopes)


@pytest.mark.parametrize(
    "scopes", [["admin"], [], "identity", None], ids=["unknown", "empty", "string", "missing"]
)
def test_forged_unknown_scope_refused_at_verify(scopes: Any) -> None:
    forged = _forge(_issue(), scopes=scopes)
    with pytest.raises(UnknownScope):
        verify_grant(forged, now=NOW)


def test_purpose_text_too_long(empty_cwd: Path) -> None:
    with pytest.raises(GrantError, match="500"):
        _issue(purpose_text="x" * 501)


# --- proofs and signers ------------------------------------------------------------------


def test_wrong_cryptosuite() -> None:
    credential = _issue()
    credential["proof"]["cryptosuite"] = "eddsa-rdfc-2022"
    with pytest.raises(UnsupportedCryptosuite):
        verify_grant(credential, now=NOW)


TAMPERS: dict[str, tuple[str, Any]] = {
    "purpose": ("purpose", "marketing-analytics"),
    "scopes-widened": ("scopes", ["identity", "sentiment", "transaction"]),
    "requester": ("id", MALLORY.did),
    "nodes": ("nodes", [NODE.did, OTHER_NODE.did]),
    "maxQueries": ("maxQueries", 1000),
    "dpEpsilon": ("dpEpsilon", 9.0),
    "purposeText": ("purposeText", "anything"),
    "nonce": ("nonce", "0" * 32),
}


@pytest.mark.parametrize(("field", "value"), list(TAMPERS.values()), ids=list(TAMPERS))
def test_tampered_subject_field(field: str, value: Any) -> None:
    credential = _issue(max_queries=5, dp_epsilon=1.0)
    credential["credentialSubject"][field] = value
    with pytest.raises(SignatureError):
        verify_grant(credential, now=NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [("validUntil", "2026-03-01T13:00:00Z"), ("validFrom", "2026-03-01T12:00:01Z"),
     ("issuer", MALLORY.did), ("id", "urn:uuid:00000000-0000-4000-8000-000000000000")],
    ids=["validUntil", "validFrom", "issuer", "id"],
)
def test_tampered_top_level_field(field: str, value: Any) -> None:
    credential = _issue()
    credential[field] = value
    with pytest.raises(SignatureError):
        verify_grant(credential, now=NOW)


def test_signed_by_another_key_than_issuer() -> None:
    forged = _forge(_issue(), signer=MALLORY)
    assert verify_document(forged) == MALLORY.did
    assert forged["issuer"] == SUBJECT.did
    with pytest.raises(SignatureError, match="other than its issuer"):
        verify_grant(forged, now=NOW)


def test_unsigned_grant() -> None:
    with pytest.raises(SignatureError, match="no proof"):
        verify_grant(unsecured(_issue()), now=NOW)


# --- DIDs ---------------------------------------------------------------------------------

BAD_DIDS = ["", "did:web:crm.example", "did:key:z6MkNOTBASE58l0", "did:key:zQ3s", None]


@pytest.mark.parametrize("bad", BAD_DIDS, ids=["empty", "did-web", "not-base58", "short", "none"])
def test_malformed_requester(empty_cwd: Path, bad: Any) -> None:
    with pytest.raises(GrantError, match="requester") as info:
        _issue(requester=bad)
    assert isinstance(info.value.__cause__, DIDError)


@pytest.mark.parametrize("bad", BAD_DIDS, ids=["empty", "did-web", "not-base58", "short", "none"])
def test_malformed_node(empty_cwd: Path, bad: Any) -> None:
    with pytest.raises(GrantError, match="node"):
        _issue(nodes=[NODE.did, bad])


def test_no_nodes(empty_cwd: Path) -> None:
    with pytest.raises(GrantError, match="at least one node"):
        _issue(nodes=[])


@pytest.mark.parametrize(
    ("field", "value", "role"),
    [("id", "did:web:x", "requester"), ("nodes", ["did:key:zz"], "node"),
     ("issuer", "did:example:abc", "issuer")],
    ids=["requester", "node", "issuer"],
)
def test_forged_malformed_dids_at_verify(field: str, value: Any, role: str) -> None:
    forged = _forge(_issue(), **{field: value})
    with pytest.raises(GrantError, match=role):
        verify_grant(forged, now=NOW)


# --- budgets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [0, -1, 1.5, True, "5"], ids=["zero", "neg", "float", "bool", "str"]
)
def test_bad_max_queries(empty_cwd: Path, value: Any) -> None:
    with pytest.raises(GrantError, match="maxQueries"):
        _issue(max_queries=value)


@pytest.mark.parametrize(
    "value", [0, -0.5, 10.5, True, "1", float("nan"), float("inf")],
    ids=["zero", "neg", "above-10", "bool", "str", "nan", "inf"],
)
def test_bad_dp_epsilon(empty_cwd: Path, value: Any) -> None:
    with pytest.raises(GrantError, match="dpEpsilon"):
        _issue(dp_epsilon=value)


@pytest.mark.parametrize(("field", "value"), [("maxQueries", 2.0), ("dpEpsilon", "0.5")])
def test_forged_budget_types_at_verify(field: str, value: Any) -> None:
    forged = _forge(_issue(), **{field: value})
    with pytest.raises(GrantError, match=field):
        verify_grant(forged, now=NOW)


def test_good_budgets() -> None:
    grant = verify_grant(_issue(max_queries=1, dp_epsilon=10), now=NOW)
    assert (grant.max_queries, grant.dp_epsilon) == (1, 10.0)
    assert isinstance(grant.dp_epsilon, float)


# --- covers() -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requester_ok", "purpose_ok", "node_ok", "scopes_ok"),
    list(itertools.product([True, False], repeat=4)),
    ids=lambda b: "y" if b else "n",
)
def test_covers_truth_table(
    requester_ok: bool, purpose_ok: bool, node_ok: bool, scopes_ok: bool
) -> None:
    grant = verify_grant(
        _issue(scopes=["transaction", "sentiment"], nodes=[NODE.did, OTHER_NODE.did]), now=NOW
    )
    asked = {Scope.TRANSACTION} if scopes_ok else {Scope.TRANSACTION, Scope.IDENTITY}
    covered = grant.covers(
        REQUESTER.did if requester_ok else MALLORY.did,
        "quote-generation" if purpose_ok else "renewal-warning",
        asked,
        OTHER_NODE.did if node_ok else MALLORY.did,
    )
    assert covered is (requester_ok and purpose_ok and node_ok and scopes_ok)


def test_covers_all_granted_scopes() -> None:
    grant = verify_grant(_issue(scopes=["transaction", "sentiment"]), now=NOW)
    assert grant.covers(REQUESTER.did, "quote-generation", grant.scopes, NODE.did)


# --- revocations --------------------------------------------------------------------------


def test_revocation_round_trip() -> None:
    grant = verify_grant(_issue(), now=NOW)
    document = issue_revocation(SUBJECT, grant.id, reason="changed my mind", now=NOW)
    revocation = verify_revocation(document)
    assert revocation.grant_id == grant.id
    assert revocation.subject == SUBJECT.did == grant.subject
    assert revocation.issued == NOW
    assert revocation.reason == "changed my mind"
    assert revocation.digest == canonical_sha256(document)


def test_revocation_reason_is_bounded() -> None:
    grant_id = _issue()["id"]
    document = issue_revocation(SUBJECT, grant_id, reason="r" * 2000, now=NOW)
    assert len(verify_revocation(document).reason) == 500


@pytest.mark.parametrize(
    ("field", "value"),
    [("grant", "urn:uuid:00000000-0000-4000-8000-000000000000"), ("issued", "2026-03-01T12:00:01Z"),
     ("reason", "other")],
)
def test_revocation_tampered(field: str, value: str) -> None:
    document = issue_revocation(SUBJECT, _issue()["id"], now=NOW)
    document[field] = value
    with pytest.raises(RevocationError, match="signature"):
        verify_revocation(document)


def test_revocation_wrong_cryptosuite() -> None:
    document = issue_revocation(SUBJECT, _issue()["id"], now=NOW)
    document["proof"]["cryptosuite"] = "eddsa-rdfc-2022"
    with pytest.raises(RevocationError) as info:
        verify_revocation(document)
    assert isinstance(info.value.__cause__, UnsupportedCryptosuite)


def test_revocation_signed_by_another_key() -> None:
    document = issue_revocation(SUBJECT, _issue()["id"], now=NOW)
    forged = sign_document(unsecured(document), MALLORY, created=NOW)
    with pytest.raises(RevocationError, match="other than its issuer"):
        verify_revocation(forged)


@pytest.mark.parametrize(
    "document",
    [None, [], {"type": ["ConsentGrant"]}, {"type": "ConsentGrant"}],
    ids=["none", "list", "grant-type", "string-type"],
)
def test_revocation_wrong_type(document: Any) -> None:
    with pytest.raises(RevocationError, match="not a ConsentRevocation"):
        verify_revocation(document)


def test_grant_is_not_a_revocation() -> None:
    with pytest.raises(RevocationError, match="not a ConsentRevocation"):
        verify_revocation(_issue())


def test_revocation_type_must_be_exact() -> None:
    # A signed statement whose type is a *string* that merely contains "ConsentRevocation"
    # is another kind of document; substring matching must not accept it.
    document = issue_revocation(SUBJECT, _issue()["id"], now=NOW)
    confused = sign_document({**unsecured(document), "type": "NotAConsentRevocation"}, SUBJECT)
    with pytest.raises(RevocationError):
        verify_revocation(confused)


def test_revocation_is_not_a_grant() -> None:
    document = issue_revocation(SUBJECT, _issue()["id"], now=NOW)
    with pytest.raises(GrantError, match="not a ConsentGrant"):
        verify_grant(document, now=NOW)


def test_issue_revocation_refuses_bad_grant_id(empty_cwd: Path) -> None:
    # verify_revocation refuses a grant id that is not a urn:uuid, so issuing one must fail
    # up front with the same error instead of signing a statement nobody will accept.
    with pytest.raises(RevocationError, match="urn:uuid"):
        issue_revocation(SUBJECT, "grant-42", now=NOW)
