"""Sealed envelopes between two did:key parties, ``intl`` profile (NaCl ``crypto_box``:
X25519 + XSalsa20-Poly1305).

Both sides' X25519 keys are the keyAgreement keys of their Ed25519 did:keys, so the box
authenticates the sender: only the holder of the sender DID's key could have sealed it.
Envelopes for the ``gm`` profile (SM2 + SM4, with sessions) live in ``consent.envelope_gm``.

Byte format (version 1)::

    0       1 byte   format version = 1
    1       1 byte   profile = 1 (intl)
    2..34   32 bytes sender Ed25519 public key (its did:key)
    34..42  8 bytes  recipient key id = SHA-256(recipient X25519 public key)[:8]
    42..66  24 bytes nonce (random)
    66..    crypto_box(header || plaintext), 16-byte Poly1305 tag included

The 42-byte header is repeated inside the box and compared on opening, so a change to any
byte of the envelope is detected.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import nacl.exceptions
import nacl.public
import nacl.utils

from consent.did import DIDError, did_from_ed25519, resolve, x25519_from_ed25519
from consent.errors import EnvelopeError
from consent.identity import Identity

VERSION = 1
PROFILE_INTL = 1
HEADER_LENGTH = 42
NONCE_LENGTH = nacl.public.Box.NONCE_SIZE
MIN_LENGTH = HEADER_LENGTH + NONCE_LENGTH + 16


@dataclass(frozen=True)
class Opened:
    """An opened envelope: who sealed it, and what they sealed."""

    sender_did: str
    plaintext: bytes


@functools.lru_cache(maxsize=4096)
def _box(private_key: bytes, peer_public_key: bytes) -> nacl.public.Box:
    """The Box for a key pair, cached: its X25519 precomputation dominates small envelopes."""
    return nacl.public.Box(
        nacl.public.PrivateKey(private_key), nacl.public.PublicKey(peer_public_key)
    )


@functools.lru_cache(maxsize=4096)
def _x25519_of(ed25519_public: bytes) -> bytes:
    return x25519_from_ed25519(ed25519_public)


def key_id(x25519_public: bytes) -> bytes:
    return hashlib.sha256(x25519_public).digest()[:8]


def seal(plaintext: bytes, sender: Identity, recipient_did: str) -> bytes:
    """Seal ``plaintext`` from ``sender`` to the holder of ``recipient_did``."""
    try:
        recipient = resolve(recipient_did)
    except DIDError as exc:
        raise EnvelopeError(f"cannot seal to {recipient_did!r}: {exc}") from exc
    header = (
        bytes([VERSION, PROFILE_INTL])
        + bytes(sender.signing_key.verify_key)
        + key_id(bytes(recipient.x25519))
    )
    nonce = nacl.utils.random(NONCE_LENGTH)
    try:
        box = _box(bytes(sender.box_key), bytes(recipient.x25519))
    except nacl.exceptions.CryptoError as exc:
        # libsodium refuses low-order points (an all-zero shared secret).
        raise EnvelopeError("the recipient's key-agreement key is a low-order point") from exc
    return header + bytes(box.encrypt(header + plaintext, nonce))


def open_sealed(envelope: bytes, recipient: Identity) -> Opened:
    """Open an envelope addressed to ``recipient``; raise ``EnvelopeError`` on any defect."""
    if len(envelope) < MIN_LENGTH:
        raise EnvelopeError("the envelope is truncated")
    header = envelope[:HEADER_LENGTH]
    if header[0] != VERSION:
        raise EnvelopeError(f"unsupported envelope version {header[0]}: expected {VERSION}")
    if header[1] != PROFILE_INTL:
        raise EnvelopeError("this envelope is not an intl (NaCl box) envelope")
    sender_key = header[2:34]
    if header[34:42] != key_id(bytes(recipient.box_key.public_key)):
        raise EnvelopeError("the envelope is addressed to a different key")
    try:
        box = _box(bytes(recipient.box_key), _x25519_of(sender_key))
        inner = box.decrypt(envelope[HEADER_LENGTH:])
    except (DIDError, nacl.exceptions.CryptoError, ValueError) as exc:
        raise EnvelopeError("the envelope failed authentication: it was altered or forged") from exc
    if inner[:HEADER_LENGTH] != header:
        raise EnvelopeError("the envelope header was altered")
    return Opened(did_from_ed25519(sender_key), inner[HEADER_LENGTH:])
