"""W3C Verifiable Credential Data Integrity proofs.

- ``eddsa-jcs-2022`` (W3C VC Data Integrity EdDSA Cryptosuites v1.0, §3.3): the proof
  configuration and the unsecured document are each canonicalised with RFC 8785 and hashed
  with SHA-256; Ed25519 signs ``proofHash || docHash``; ``proofValue`` is base58btc multibase.
- ``sm2-sm3-jcs-2026`` (this project's ``gm`` profile, built the same way): SM3 hashes and an
  SM2 signature (GB/T 32918.2, user ID ``1234567812345678``). The SM2 proof comes first; the
  Ed25519 proof chains to it with ``previousProof`` (Data Integrity §2.1.2 proof chains), so the
  Ed25519 key vouches for the SM2 key named in the SM2 proof's verification method.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import nacl.exceptions

from consent import multibase
from consent.canonical import canonicalize
from consent.did import DID_KEY_PREFIX, verification_method_key
from consent.errors import DIDError, SignatureError, UnsupportedCryptosuite
from consent.identity import Identity
from consent.utctime import utc_text

PROOF_TYPE = "DataIntegrityProof"
EDDSA_JCS = "eddsa-jcs-2022"
SM2_JCS = "sm2-sm3-jcs-2026"
SM2_FRAGMENT = "#sm2-"
SIGNATURE_LENGTH = 64


def format_time(moment: datetime) -> str:
    """XML Schema dateTime in UTC with second precision, as the VC examples use."""
    return utc_text(moment)


def _sm3(data: bytes) -> bytes:
    from consent.sm import sm3

    return sm3(data)


def _hash_input(
    document: dict[str, Any], proof_config: dict[str, Any], digest: Callable[[bytes], bytes]
) -> bytes:
    return digest(canonicalize(proof_config)) + digest(canonicalize(document))


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _proof_config(
    document: dict[str, Any], cryptosuite: str, method: str, purpose: str, created: datetime
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "type": PROOF_TYPE,
        "cryptosuite": cryptosuite,
        "created": format_time(created),
        "verificationMethod": method,
        "proofPurpose": purpose,
    }
    if "@context" in document:
        config["@context"] = document["@context"]
    return config


def unsecured(document: dict[str, Any]) -> dict[str, Any]:
    """The document without its ``proof``."""
    return {k: v for k, v in document.items() if k != "proof"}


def sign_document(
    document: dict[str, Any],
    identity: Identity,
    *,
    proof_purpose: str = "assertionMethod",
    created: datetime | None = None,
) -> dict[str, Any]:
    """``document`` secured by ``identity``: one proof in ``intl``, a chain of two in ``gm``."""
    created = created or datetime.now(UTC)
    base = unsecured(document)
    if identity.sm2 is None:
        return {**base, "proof": _eddsa_proof(base, base, identity, proof_purpose, created)}
    sm2_method = f"{identity.did}{SM2_FRAGMENT}{identity.sm2.public_key().to_hex()}"
    sm2_config = _proof_config(base, SM2_JCS, sm2_method, proof_purpose, created)
    sm2_config["id"] = f"urn:uuid:{uuid.uuid4()}"
    signature = identity.sm2.sign(_hash_input(base, sm2_config, _sm3))
    sm2_proof = {**sm2_config, "proofValue": _multibase(signature)}
    chained = {**base, "proof": sm2_proof}
    ed_proof = _eddsa_proof(
        base, chained, identity, proof_purpose, created, previous=sm2_config["id"]
    )
    return {**base, "proof": [sm2_proof, ed_proof]}


def _eddsa_proof(
    base: dict[str, Any],
    signed_over: dict[str, Any],
    identity: Identity,
    purpose: str,
    created: datetime,
    previous: str | None = None,
) -> dict[str, Any]:
    config = _proof_config(base, EDDSA_JCS, identity.verification_method, purpose, created)
    if previous is not None:
        config["previousProof"] = previous
    signature = identity.sign(_hash_input(signed_over, config, _sha256))
    return {**config, "proofValue": _multibase(signature)}


def _multibase(signature: bytes) -> str:
    return multibase.encode(signature)


def _signature(proof: dict[str, Any]) -> bytes:
    value = proof.get("proofValue")
    if not isinstance(value, str) or not value.startswith("z"):
        raise SignatureError("proofValue must be a base58btc multibase string")
    try:
        signature = multibase.decode(value)
    except ValueError as exc:
        raise SignatureError("proofValue is not valid base58btc") from exc
    if len(signature) != SIGNATURE_LENGTH:
        raise SignatureError(f"a signature must be {SIGNATURE_LENGTH} bytes")
    return signature


def _check_config(proof: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(proof, dict):
        raise SignatureError("a proof must be a JSON object")
    if proof.get("type") != PROOF_TYPE:
        raise UnsupportedCryptosuite(f"proof type must be {PROOF_TYPE}")
    if proof.get("cryptosuite") not in (EDDSA_JCS, SM2_JCS):
        raise UnsupportedCryptosuite(
            f"cryptosuite {proof.get('cryptosuite')!r} is not accepted: use {EDDSA_JCS}"
        )
    if "@context" in proof and proof["@context"] != base.get("@context"):
        raise SignatureError("the proof's @context does not match the document's")
    for name in ("created", "verificationMethod", "proofPurpose"):
        if not isinstance(proof.get(name), str):
            raise SignatureError(f"the proof lacks a {name}")
    return {k: v for k, v in proof.items() if k != "proofValue"}


def _verify_eddsa(proof: dict[str, Any], base: dict[str, Any], signed_over: dict[str, Any]) -> str:
    config = _check_config(proof, base)
    try:
        key = verification_method_key(proof["verificationMethod"])
    except DIDError as exc:
        raise SignatureError(f"bad verification method: {exc}") from exc
    if key.ed25519 is None:
        raise SignatureError("the verification method is not an Ed25519 key")
    try:
        key.ed25519.verify(_hash_input(signed_over, config, _sha256), _signature(proof))
    except nacl.exceptions.BadSignatureError as exc:
        raise SignatureError("the Ed25519 proof does not verify: the document was altered") from exc
    return key.did


def _verify_sm2(proof: dict[str, Any], base: dict[str, Any], did: str) -> None:
    from consent.sm import SM2PublicKey

    config = _check_config(proof, base)
    method = proof["verificationMethod"]
    prefix = f"{did}{SM2_FRAGMENT}"
    if not method.startswith(prefix):
        raise SignatureError("the SM2 proof's verification method does not belong to the signer")
    try:
        public_key = SM2PublicKey.from_hex(method[len(prefix):])
    except ValueError as exc:
        raise SignatureError("the SM2 verification method holds no valid SM2 public key") from exc
    public_key.verify(_hash_input(base, config, _sm3), _signature(proof))


def verify_document(document: dict[str, Any], *, require_sm2: bool = False) -> str:
    """Verify every proof on ``document``; return the DID that signed it.

    Accepts one ``eddsa-jcs-2022`` proof, or the ``gm`` chain [SM2 proof, Ed25519 proof with
    ``previousProof``]; with ``require_sm2`` (a ``gm``-profile verifier's policy) only the
    chain. Raises ``SignatureError`` (or ``UnsupportedCryptosuite``) otherwise.
    """
    if not isinstance(document, dict) or "proof" not in document:
        raise SignatureError("the document carries no proof: it must be signed")
    base = unsecured(document)
    proof = document["proof"]
    if isinstance(proof, dict):
        if require_sm2:
            raise SignatureError("this verifier requires an SM2 proof (gm profile) beside Ed25519")
        if proof.get("cryptosuite") == SM2_JCS:
            raise SignatureError("an SM2 proof must be chained to an Ed25519 proof")
        if "previousProof" in proof:
            raise SignatureError("previousProof names a proof that is not present")
        return _verify_eddsa(proof, base, base)
    if not (isinstance(proof, list) and len(proof) == 2):
        raise SignatureError("expected one proof, or an SM2 proof followed by an Ed25519 proof")
    sm2_proof, ed_proof = proof
    if not isinstance(sm2_proof, dict) or sm2_proof.get("cryptosuite") != SM2_JCS:
        raise UnsupportedCryptosuite(f"the first proof of a chain must use {SM2_JCS}")
    if not isinstance(ed_proof, dict) or ed_proof.get("previousProof") != sm2_proof.get("id"):
        raise SignatureError("the Ed25519 proof must chain to the SM2 proof via previousProof")
    did = _verify_eddsa(ed_proof, base, {**base, "proof": sm2_proof})
    _verify_sm2(sm2_proof, base, did)
    return did


def signer_did(document: dict[str, Any]) -> str:
    """The DID named by the (last) proof, without verifying it: for routing, never for trust."""
    proof = document.get("proof")
    last = proof[-1] if isinstance(proof, list) and proof else proof
    method = last.get("verificationMethod", "") if isinstance(last, dict) else ""
    did = method.partition("#")[0]
    if not did.startswith(DID_KEY_PREFIX):
        raise SignatureError("the proof names no did:key verification method")
    return did
