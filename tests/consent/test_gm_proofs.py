"""The ``gm`` profile's proof chain on grants: an SM2 (SM3) proof, then an Ed25519
``eddsa-jcs-2022`` proof whose ``previousProof`` covers it (consent/integrity.py)."""

from __future__ import annotations

import copy
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from consent.errors import SignatureError, UnsupportedCryptosuite
from consent.grants import issue_grant, verify_grant
from consent.identity import Identity
from consent.integrity import (
    SM2_FRAGMENT,
    SM2_JCS,
    _hash_input,
    _sm3,
    sign_document,
    unsecured,
    verify_document,
)
from consent.sm import SM2PrivateKey

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SUBJECT = Identity.from_seed(bytes(range(32)), profile="gm")
REQUESTER = Identity.from_seed(bytes(range(1, 33)))
NODE = Identity.from_seed(bytes(range(2, 34)))


@pytest.fixture(scope="module")
def grant() -> dict[str, Any]:
    return issue_grant(SUBJECT, requester=REQUESTER.did, nodes=[NODE.did],
                       purpose="quote-generation", scopes=["transaction"],
                       ttl=timedelta(hours=24), now=NOW)


def test_gm_grant_carries_an_sm2_proof_chained_to_ed25519(grant: dict[str, Any]) -> None:
    sm2_proof, ed_proof = grant["proof"]
    assert sm2_proof["cryptosuite"] == SM2_JCS
    assert sm2_proof["verificationMethod"].startswith(SUBJECT.did + SM2_FRAGMENT)
    assert ed_proof["cryptosuite"] == "eddsa-jcs-2022"
    assert ed_proof["previousProof"] == sm2_proof["id"]
    verified = verify_grant(grant, now=NOW, require_sm2=True)
    assert verified.subject == SUBJECT.did


def test_intl_grant_refused_when_sm2_is_required() -> None:
    intl = issue_grant(REQUESTER, requester=NODE.did, nodes=[NODE.did],
                       purpose="quote-generation", scopes=["transaction"],
                       ttl=timedelta(hours=1), now=NOW)
    assert verify_grant(intl, now=NOW).subject == REQUESTER.did
    with pytest.raises(SignatureError, match="SM2"):
        verify_grant(intl, now=NOW, require_sm2=True)


def test_altered_document_fails(grant: dict[str, Any]) -> None:
    altered = copy.deepcopy(grant)
    altered["credentialSubject"]["purpose"] = "marketing-analytics"
    with pytest.raises(SignatureError):
        verify_document(altered)


def test_altered_sm2_signature_fails(grant: dict[str, Any]) -> None:
    altered = copy.deepcopy(grant)
    value = altered["proof"][0]["proofValue"]
    altered["proof"][0]["proofValue"] = value[:-2] + ("1" if value[-2] != "1" else "2") + value[-1]
    with pytest.raises(SignatureError):
        verify_document(altered)


def test_substituted_sm2_key_fails(grant: dict[str, Any]) -> None:
    # An attacker re-signs the SM2 proof with their own SM2 key: the Ed25519 proof covers the
    # original SM2 proof, so the substitution is detected.
    attacker = SM2PrivateKey.generate()
    base = unsecured(grant)
    forged = copy.deepcopy(grant["proof"][0])
    forged["verificationMethod"] = f"{SUBJECT.did}{SM2_FRAGMENT}{attacker.public_key().to_hex()}"
    config = {k: v for k, v in forged.items() if k != "proofValue"}
    import base58

    forged["proofValue"] = "z" + base58.b58encode(
        attacker.sign(_hash_input(base, config, _sm3))).decode()
    with pytest.raises(SignatureError, match="altered"):
        verify_document({**base, "proof": [forged, grant["proof"][1]]})


@pytest.mark.parametrize("shape", ["sm2-only", "ed-only-with-previous", "swapped", "three"])
def test_malformed_chains_refused(grant: dict[str, Any], shape: str) -> None:
    sm2_proof, ed_proof = grant["proof"]
    proofs: Any = {
        "sm2-only": sm2_proof,
        "ed-only-with-previous": ed_proof,
        "swapped": [ed_proof, sm2_proof],
        "three": [sm2_proof, ed_proof, ed_proof],
    }[shape]
    with pytest.raises((SignatureError, UnsupportedCryptosuite)):
        verify_document({**unsecured(grant), "proof": proofs})


def test_sm2_key_of_another_did_refused(grant: dict[str, Any]) -> None:
    # The SM2 method must belong to the DID whose Ed25519 key vouches for it.
    other = Identity.from_seed(bytes(range(5, 37)), profile="gm")
    resigned = sign_document(unsecured(grant), other)
    mixed = copy.deepcopy(resigned)
    mixed["proof"][0]["verificationMethod"] = grant["proof"][0]["verificationMethod"]
    with pytest.raises(SignatureError):
        verify_document(mixed)


def test_openssl_verifies_the_sm2_proof(grant: dict[str, Any], tmp_path: Path) -> None:
    # Interoperability: the SM2 proof is a standard SM2 signature (SM3, user ID
    # 1234567812345678) over proofHash || docHash, so OpenSSL verifies it unchanged.
    from consent.sm import SM2PublicKey, sm2_signature_to_der

    sm2_proof = grant["proof"][0]
    config = {k: v for k, v in sm2_proof.items() if k != "proofValue"}
    message = _hash_input(unsecured(grant), config, _sm3)
    public = SM2PublicKey.from_hex(sm2_proof["verificationMethod"].split(SM2_FRAGMENT)[1])
    import base58

    signature = base58.b58decode(sm2_proof["proofValue"][1:])
    (tmp_path / "pub.pem").write_bytes(public.to_pem())
    (tmp_path / "msg").write_bytes(message)
    (tmp_path / "sig").write_bytes(sm2_signature_to_der(signature))
    result = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin",
         "-digest", "sm3", "-pkeyopt", "distid:1234567812345678", "-in", "msg",
         "-sigfile", "sig"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Signature Verified Successfully" in result.stdout


def test_gm_revocation_requires_sm2_when_asked() -> None:
    from consent.errors import RevocationError
    from consent.grants import issue_revocation, verify_revocation

    gm_statement = issue_revocation(SUBJECT, "urn:uuid:00000000-0000-4000-8000-000000000000")
    assert verify_revocation(gm_statement, require_sm2=True).subject == SUBJECT.did
    intl_statement = issue_revocation(REQUESTER, "urn:uuid:00000000-0000-4000-8000-000000000000")
    with pytest.raises(RevocationError, match="SM2"):
        verify_revocation(intl_statement, require_sm2=True)
