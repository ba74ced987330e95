"""A requester's published profile: the display name it signs under its own DID.

The CRM (``sov-query profile --name "Acme CRM"``) signs ``{type, v, did, name, issued}`` with
its key (a Data Integrity proof, as grants are signed); a customer's wallet verifies the proof
is by the DID the document names before it shows that name beside the DID
(``consent-wallet requesters add FILE``). A name is only what its holder claims: the wallet
keeps showing the DID with it (on hover in the dashboard), and a name says nothing unless the
customer got the document from the company itself.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Any

from consent.did import resolve
from consent.errors import ConsentError, DIDError
from consent.identity import Identity
from consent.integrity import format_time, sign_document, verify_document

PROFILE_TYPE = "SovereignRequesterProfile"
VERSION = 1
MAX_NAME = 64


class ProfileError(ConsentError):
    """A requester profile that cannot be used: its shape, name or proof."""


def check_name(name: Any) -> str:
    """A display name: 1 to MAX_NAME printable characters, no control or format characters
    (which could reorder or hide text on a customer's screen), trimmed."""
    if not isinstance(name, str) or not name.strip():
        raise ProfileError("a requester's display name must be a non-empty string")
    name = name.strip()
    if len(name) > MAX_NAME:
        raise ProfileError(f"a requester's display name is at most {MAX_NAME} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        raise ProfileError("a requester's display name may not hold control or direction "
                           "characters")
    return name


def issue_profile(identity: Identity, name: str, *, now: datetime | None = None
                  ) -> dict[str, Any]:
    """The requester's signed profile document."""
    document = {"type": PROFILE_TYPE, "v": VERSION, "did": identity.did,
                "name": check_name(name),
                "issued": format_time((now or datetime.now(UTC)).replace(microsecond=0))}
    return sign_document(document, identity)


def verify_profile(document: Any) -> tuple[str, str]:
    """(DID, display name) of a profile, once its proof is checked to be by that DID."""
    if not isinstance(document, dict) or document.get("type") != PROFILE_TYPE \
            or document.get("v") != VERSION:
        raise ProfileError(f"not a {PROFILE_TYPE} document (version {VERSION}): ask the "
                           "company for the file 'sov-query profile' writes")
    did = document.get("did")
    try:
        resolve(str(did))
    except DIDError as exc:
        raise ProfileError(f"the profile names an invalid DID ({exc})") from None
    name = check_name(document.get("name"))
    try:
        signer = verify_document(document)
    except ConsentError as exc:
        raise ProfileError(f"the profile's proof does not verify ({exc})") from None
    if signer != did:
        raise ProfileError("the profile is not signed by the DID it names")
    return str(did), name


__all__ = ["MAX_NAME", "PROFILE_TYPE", "ProfileError", "check_name", "issue_profile",
           "verify_profile"]
