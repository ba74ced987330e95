"""A party's key material: an Ed25519 signing key (RFC 8032) that is also its did:key, the
X25519 key-agreement key derived from it (RFC 7748), and in the ``gm`` profile an SM2 key
pair (GB/T 32918) whose signatures stand beside the Ed25519 ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import nacl.public
import nacl.signing

from consent.did import did_from_ed25519, multibase_encode

if TYPE_CHECKING:
    from consent.sm import SM2PrivateKey

Profile = Literal["intl", "gm"]
PROFILES: tuple[Profile, ...] = ("intl", "gm")


@dataclass(frozen=True)
class Identity:
    """Private keys of one party. Never logged; stored only through ``consent.keystore``."""

    signing_key: nacl.signing.SigningKey
    profile: Profile = "intl"
    sm2: SM2PrivateKey | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown crypto profile {self.profile!r}: use 'intl' or 'gm'")
        if self.profile == "gm" and self.sm2 is None:
            raise ValueError("the gm profile needs an SM2 key pair")

    @classmethod
    def generate(cls, profile: Profile = "intl") -> Identity:
        return cls.from_seed(nacl.signing.SigningKey.generate().encode(), profile=profile)

    @classmethod
    def from_seed(
        cls, seed: bytes, profile: Profile = "intl", sm2: SM2PrivateKey | None = None
    ) -> Identity:
        if profile == "gm" and sm2 is None:
            from consent.sm import SM2PrivateKey

            sm2 = SM2PrivateKey.generate()
        return cls(nacl.signing.SigningKey(seed), profile=profile, sm2=sm2)

    @cached_property
    def did(self) -> str:
        return did_from_ed25519(bytes(self.signing_key.verify_key))

    @property
    def verification_method(self) -> str:
        fingerprint = self.did.removeprefix("did:key:")
        return f"{self.did}#{fingerprint}"

    @cached_property
    def box_key(self) -> nacl.public.PrivateKey:
        """The X25519 private key matching the keyAgreement key of this did:key."""
        return self.signing_key.to_curve25519_private_key()

    @property
    def public_multikey(self) -> str:
        return multibase_encode(b"\xed\x01", bytes(self.signing_key.verify_key))

    def sign(self, data: bytes) -> bytes:
        """A detached 64-byte Ed25519 signature."""
        return self.signing_key.sign(data).signature
