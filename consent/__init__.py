"""The consent kernel that every other part trusts.

- ``consent.identity``  Ed25519 / X25519 (and SM2 in ``gm``) key material of one party
- ``consent.did``       did:key encode / resolve / DID documents
- ``consent.keystore``  passphrase-encrypted keystores (Argon2id + XSalsa20-Poly1305)
- ``consent.canonical`` RFC 8785 canonical JSON
- ``consent.integrity`` W3C Data Integrity proofs (eddsa-jcs-2022; SM2 beside it in ``gm``)
- ``consent.grants``    consent grants and revocations as Verifiable Credentials
- ``consent.envelope``  sealed envelopes (NaCl box); ``consent.envelope_gm`` for SM2 + SM4
- ``consent.replay``    nonce + time-window replay guard
- ``consent.sm``        SM2 / SM3 / SM4 (national-standard profile)
- ``consent.errors``    the error classes
- ``consent.settingsfile`` a tool's TOML settings file read into its settings dataclass
"""

from consent.errors import ConsentError
from consent.grants import Grant, Revocation, Scope, issue_grant, verify_grant
from consent.identity import Identity

# The public names other packages may import (tests/test_public_names.py): these, and every
# module of the kernel.
__all__ = [
    "ConsentError",
    "Grant",
    "Identity",
    "Revocation",
    "Scope",
    "canonical",
    "commandline",
    "did",
    "envelope",
    "envelope_gm",
    "errors",
    "grants",
    "grantstate",
    "identity",
    "integrity",
    "issue_grant",
    "keystore",
    "multibase",
    "passphrase",
    "profile",
    "protocol",
    "registration",
    "replay",
    "rotation",
    "settingsfile",
    "sm",
    "timespec",
    "utctime",
    "verify_grant",
]
