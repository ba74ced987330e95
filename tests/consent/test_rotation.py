"""consent.rotation: a node's key rotation is followed only when signed by the key it
retires, link by link from the DID a wallet pinned."""

from __future__ import annotations

import copy

import pytest

from consent.errors import RotationError
from consent.identity import Identity
from consent.rotation import follow, issue_rotation, verify_rotation

A, B, C, MALLORY = (Identity.from_seed(bytes([i]) * 32) for i in (1, 2, 3, 4))


def test_a_chain_of_rotations_leads_from_the_pinned_did() -> None:
    statements = [issue_rotation(B, C.did), issue_rotation(A, B.did)]  # any order
    chain = follow(A.did, C.did, statements)
    assert [(r.previous, r.did) for r in chain] == [(A.did, B.did), (B.did, C.did)]
    assert follow(A.did, A.did, []) == []


def test_a_rotation_not_signed_by_the_retired_key_is_not_followed() -> None:
    forged = issue_rotation(MALLORY, B.did)
    forged_named = copy.deepcopy(forged)
    forged_named["previous"] = A.did  # claims to retire A, signed by Mallory
    with pytest.raises(RotationError, match=r"signed by the key it retires|does not verify"):
        verify_rotation(forged_named)
    with pytest.raises(RotationError, match=f"no key rotation signed by {A.did}"):
        follow(A.did, B.did, [forged, forged_named])


def test_an_altered_statement_fails_its_proof() -> None:
    statement = issue_rotation(A, B.did)
    statement["did"] = C.did
    with pytest.raises(RotationError, match="does not verify"):
        verify_rotation(statement)


@pytest.mark.parametrize("document", [None, {}, {"type": "NodeKeyRotation", "v": 2}])
def test_malformed_statements_are_refused(document: object) -> None:
    with pytest.raises(RotationError, match="not a NodeKeyRotation"):
        verify_rotation(document)


def test_a_rotation_must_name_a_new_did() -> None:
    with pytest.raises(RotationError, match="new DID"):
        issue_rotation(A, A.did)
