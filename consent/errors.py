"""Explicit error classes of the consent kernel.

Every rejection is typed, and ``str(error)`` is one sentence a person can act on. Messages
name what was wrong, never a secret or a customer value.
"""

from __future__ import annotations


class ConsentError(Exception):
    """Base class of every error raised by ``consent``."""


class DIDError(ConsentError):
    """A DID is malformed or uses a key type this project does not support."""


class SignatureError(ConsentError):
    """A signature or proof is missing, malformed, or does not verify."""


class UnsupportedCryptosuite(SignatureError):
    """A proof names a type or cryptosuite this verifier does not accept."""


class EnvelopeError(ConsentError):
    """A sealed envelope is truncated, tampered with, or not addressed to this key."""


class ReplayError(ConsentError):
    """A request was seen before or lies outside the accepted time window."""


class KeystoreError(ConsentError):
    """A keystore cannot be read: wrong passphrase, tampered file, or bad format."""


class GrantError(ConsentError):
    """A grant is malformed or not valid for the use asked of it."""


class GrantExpired(GrantError):
    """The grant's validity window has ended."""


class GrantNotYetValid(GrantError):
    """The grant's not-before time lies in the future."""


class GrantWindowTooLong(GrantError):
    """The grant would stay valid longer than policy allows (at most 72 hours)."""


class UnknownPurpose(GrantError):
    """The purpose is not in the controlled vocabulary."""


class UnknownScope(GrantError):
    """A scope tier is not one of identity, transaction, sentiment."""


class RevocationError(ConsentError):
    """A revocation statement is malformed or was not issued by the grant's subject."""


class RotationError(ConsentError):
    """A node key rotation statement is malformed, not signed by the old key, or no chain of
    them leads from a pinned DID to the one a node presents."""
