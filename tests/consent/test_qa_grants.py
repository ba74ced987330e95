"""Review findings on ``consent.grants`` (issue 2): rejections that are not yet typed errors.

Every rejection must be a typed ``ConsentError`` whose message says what was wrong. A customer
(or anyone holding a did:key) can sign any JSON, so a validly signed credential with malformed
fields must still be refused with a ``GrantError``, never an untyped ``TypeError``.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from consent.errors import GrantError
from consent.grants import VC_CONTEXT, issue_grant, verify_grant
from consent.identity import Identity
from consent.integrity import sign_document

SUBJECT = Identity.generate()


def _signed_with(mutate: Any) -> dict[str, Any]:
    """A grant re-signed by its own subject after ``mutate`` changed its body."""
    credential = issue_grant(
        SUBJECT, requester=Identity.generate().did, nodes=[Identity.generate().did],
        purpose="quote-generation", scopes=["transaction"], ttl=timedelta(hours=2),
    )
    body = copy.deepcopy({k: v for k, v in credential.items() if k != "proof"})
    mutate(body)
    return sign_document(body, SUBJECT)


@pytest.mark.parametrize("purpose", [7, ["quote-generation"], {"name": "quote-generation"}, None])
def test_a_non_string_purpose_is_a_grant_error(purpose: object) -> None:
    """consent/grants.py check_purpose() does `purpose not in PURPOSES` and difflib on a
    non-string: TypeError ('int' object is not iterable / unhashable type) escapes."""
    signed = _signed_with(lambda d: d["credentialSubject"].__setitem__("purpose", purpose))
    with pytest.raises(GrantError, match="purpose"):
        verify_grant(signed)


@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        ("no @context", lambda d: d.pop("@context")),
        ("another @context first", lambda d: d.__setitem__("@context",
                                                           ["https://example.com/ctx"])),
        ("type without VerifiableCredential", lambda d: d.__setitem__("type", ["ConsentGrant"])),
    ],
)
def test_a_grant_must_be_a_verifiable_credential(name: str, mutate: Any) -> None:
    """VC Data Model 2.0 §4.3/§4.5: @context starts with the v2 context and type includes
    VerifiableCredential. Third-party VC tooling refuses such a document; so must we."""
    signed = _signed_with(mutate)
    with pytest.raises(GrantError):
        verify_grant(signed)
    # The unmodified shape is accepted, so the test pins exactly the missing check.
    assert verify_grant(_signed_with(lambda d: None)).credential["@context"][0] == VC_CONTEXT
