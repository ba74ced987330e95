"""did:key identifiers (W3C CCG did:key method, v0.7) for Ed25519 and X25519 keys.

A did:key is ``did:key:`` + multibase base58btc (prefix ``z``) of a multicodec-tagged public
key: ``ed25519-pub`` (0xed, varint ``ed 01``) or ``x25519-pub`` (0xec, varint ``ec 01``). An
Ed25519 did:key also yields an X25519 key-agreement key, derived from the Ed25519 public key
(birational map, RFC 7748 §4.1), which is what sealed envelopes are addressed to.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

from consent import multibase
from consent.errors import DIDError

DID_KEY_PREFIX = "did:key:"
ED25519_PUB = b"\xed\x01"
X25519_PUB = b"\xec\x01"
KEY_LENGTH = 32


@functools.lru_cache(maxsize=4096)
def multibase_encode(codec: bytes, key: bytes) -> str:
    """``z`` + base58btc(codec || key): the multibase form used in DIDs and Multikeys."""
    return multibase.encode(codec + key)


def multibase_decode(value: str) -> tuple[bytes, bytes]:
    """Split a base58btc multibase multikey into (codec, key bytes)."""
    if not value.startswith("z"):
        raise DIDError("multibase value must use base58btc (start with 'z')")
    try:
        raw = multibase.decode(value)
    except ValueError as exc:
        raise DIDError("multibase value is not valid base58btc") from exc
    codec, key = raw[:2], raw[2:]
    if codec not in (ED25519_PUB, X25519_PUB):
        raise DIDError("unsupported key type: only ed25519-pub and x25519-pub keys are accepted")
    if len(key) != KEY_LENGTH:
        raise DIDError(f"public key must be {KEY_LENGTH} bytes, found {len(key)}")
    return codec, key


def did_from_ed25519(public_key: bytes) -> str:
    if len(public_key) != KEY_LENGTH:
        raise DIDError(f"Ed25519 public key must be {KEY_LENGTH} bytes")
    return DID_KEY_PREFIX + multibase_encode(ED25519_PUB, public_key)


def did_from_x25519(public_key: bytes) -> str:
    if len(public_key) != KEY_LENGTH:
        raise DIDError(f"X25519 public key must be {KEY_LENGTH} bytes")
    return DID_KEY_PREFIX + multibase_encode(X25519_PUB, public_key)


def x25519_from_ed25519(public_key: bytes) -> bytes:
    """The X25519 public key derived from an Ed25519 public key (libsodium's map)."""
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key)
    except (nacl.exceptions.RuntimeError, ValueError) as exc:
        raise DIDError("the Ed25519 key is not a valid curve point") from exc


@dataclass(frozen=True)
class ResolvedKey:
    """What a did:key resolves to. ``ed25519`` is None for an X25519-only did:key."""

    did: str
    fingerprint: str
    ed25519: nacl.signing.VerifyKey | None
    x25519: nacl.public.PublicKey

    @property
    def verification_method(self) -> str:
        return f"{self.did}#{self.fingerprint}"


def resolve(did: str) -> ResolvedKey:
    """Decode a did:key, raising ``DIDError`` with the reason when it is malformed."""
    if not isinstance(did, str):
        raise DIDError("a DID must be a did:key string (did:key:z6Mk... for Ed25519)")
    return _resolve(did)


@functools.lru_cache(maxsize=8192)
def _resolve(did: str) -> ResolvedKey:
    # Cached: resolving is pure, and the key conversions cost more than an envelope.
    if not did.startswith(DID_KEY_PREFIX):
        raise DIDError("a DID must be a did:key (did:key:z6Mk... for Ed25519)")
    fingerprint = did[len(DID_KEY_PREFIX):]
    if not fingerprint or "#" in fingerprint or ":" in fingerprint:
        raise DIDError("a did:key must be followed by exactly one multibase key")
    codec, key = multibase_decode(fingerprint)
    if codec == ED25519_PUB:
        return ResolvedKey(
            did, fingerprint, nacl.signing.VerifyKey(key),
            nacl.public.PublicKey(x25519_from_ed25519(key)),
        )
    return ResolvedKey(did, fingerprint, None, nacl.public.PublicKey(key))


def verification_method_key(verification_method: str) -> ResolvedKey:
    """Resolve ``did:key:X#X`` (the only fragment a did:key document defines)."""
    did, sep, fragment = verification_method.partition("#")
    resolved = resolve(did)
    if sep and fragment != resolved.fingerprint:
        raise DIDError("verification method fragment does not match the did:key")
    return resolved


def did_document(did: str) -> dict[str, Any]:
    """The did:key DID document (Multikey form, as the did:key spec's example shows)."""
    resolved = resolve(did)
    x25519_fp = multibase_encode(X25519_PUB, bytes(resolved.x25519))
    key_agreement = {
        "id": f"{did}#{x25519_fp}",
        "type": "X25519KeyAgreementKey2020",
        "controller": did,
        "publicKeyMultibase": x25519_fp,
    }
    if resolved.ed25519 is None:
        return {
            "@context": ["https://www.w3.org/ns/did/v1"],
            "id": did,
            "keyAgreement": [key_agreement],
        }
    method_id = resolved.verification_method
    return {
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/suites/ed25519-2020/v1",
            "https://w3id.org/security/suites/x25519-2020/v1",
        ],
        "id": did,
        "verificationMethod": [
            {
                "id": method_id,
                "type": "Ed25519VerificationKey2020",
                "controller": did,
                "publicKeyMultibase": resolved.fingerprint,
            }
        ],
        "authentication": [method_id],
        "assertionMethod": [method_id],
        "capabilityDelegation": [method_id],
        "capabilityInvocation": [method_id],
        "keyAgreement": [key_agreement],
    }
