"""Sealed envelopes, ``intl`` profile (NaCl ``crypto_box``: X25519 + XSalsa20-Poly1305, keys
from the parties' did:keys), version 1 byte format as documented in ``consent.envelope``.

Round trips (hypothesis over payloads), the sender's identity as reported by the recipient, and
every way an envelope can be damaged: each single bit of each byte flipped (exhaustively for one
envelope, and by hypothesis over position and bit for others), truncation, extension, the wrong
recipient, a sender who claims another DID, a wrong version or profile byte.
"""

from __future__ import annotations

import nacl.public
import nacl.utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent.did import multibase_encode
from consent.envelope import HEADER_LENGTH, NONCE_LENGTH, key_id, open_sealed, seal
from consent.errors import EnvelopeError
from consent.identity import Identity

ALICE = Identity.from_seed(bytes([11]) * 32)  # the requester
NODE = Identity.from_seed(bytes([12]) * 32)
MALLORY = Identity.from_seed(bytes([13]) * 32)
PAYLOAD = b'{"measure":"sum","column":"order_total"}'
OVERHEAD = HEADER_LENGTH + NONCE_LENGTH + 16 + HEADER_LENGTH  # header, nonce, tag, inner header


@pytest.fixture(scope="module")
def envelope() -> bytes:
    return seal(PAYLOAD, ALICE, NODE.did)


def test_round_trip_reports_sender(envelope: bytes) -> None:
    opened = open_sealed(envelope, NODE)
    assert opened.plaintext == PAYLOAD
    assert opened.sender_did == ALICE.did
    assert len(envelope) == len(PAYLOAD) + OVERHEAD


def test_layout(envelope: bytes) -> None:
    assert envelope[0] == 1 and envelope[1] == 1
    assert envelope[2:34] == bytes(ALICE.signing_key.verify_key)
    assert envelope[34:42] == key_id(bytes(NODE.box_key.public_key))
    assert PAYLOAD not in envelope  # the payload travels encrypted


def test_each_seal_uses_a_fresh_nonce() -> None:
    first, second = seal(PAYLOAD, ALICE, NODE.did), seal(PAYLOAD, ALICE, NODE.did)
    assert first[HEADER_LENGTH:] != second[HEADER_LENGTH:]
    assert open_sealed(first, NODE).plaintext == open_sealed(second, NODE).plaintext


def test_both_directions() -> None:
    answer = seal(b"42", NODE, ALICE.did)
    opened = open_sealed(answer, ALICE)
    assert (opened.sender_did, opened.plaintext) == (NODE.did, b"42")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=4096))
def test_round_trip_any_payload(payload: bytes) -> None:
    opened = open_sealed(seal(payload, ALICE, NODE.did), NODE)
    assert (opened.sender_did, opened.plaintext) == (ALICE.did, payload)


def _flip(data: bytes, position: int, bit: int) -> bytes:
    changed = bytearray(data)
    changed[position] ^= 1 << bit
    return bytes(changed)


def test_every_single_bit_flip_detected(envelope: bytes) -> None:
    # Exhaustive over one envelope: 8 x len(envelope) opens, each must fail.
    undetected = []
    for position in range(len(envelope)):
        for bit in range(8):
            try:
                open_sealed(_flip(envelope, position, bit), NODE)
            except EnvelopeError:
                continue
            undetected.append((position, bit))
    assert undetected == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256), st.data())
def test_bit_flip_detected_property(payload: bytes, data: st.DataObject) -> None:
    sealed = seal(payload, ALICE, NODE.did)
    position = data.draw(st.integers(0, len(sealed) - 1), label="position")
    bit = data.draw(st.integers(0, 7), label="bit")
    with pytest.raises(EnvelopeError):
        open_sealed(_flip(sealed, position, bit), NODE)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_byte_replaced_detected(envelope: bytes, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(envelope) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != envelope[position]), label="v")
    changed = envelope[:position] + bytes([value]) + envelope[position + 1:]
    with pytest.raises(EnvelopeError):
        open_sealed(changed, NODE)


def test_every_truncation_detected(envelope: bytes) -> None:
    for length in range(len(envelope)):
        with pytest.raises(EnvelopeError):
            open_sealed(envelope[:length], NODE)


def test_short_envelope_says_truncated() -> None:
    with pytest.raises(EnvelopeError, match="truncated"):
        open_sealed(b"\x01\x01" + bytes(40), NODE)


@pytest.mark.parametrize("extra", [b"\x00", b"garbage" * 10])
def test_appended_bytes_detected(envelope: bytes, extra: bytes) -> None:
    with pytest.raises(EnvelopeError):
        open_sealed(envelope + extra, NODE)


def test_wrong_recipient(envelope: bytes) -> None:
    with pytest.raises(EnvelopeError, match="different key"):
        open_sealed(envelope, MALLORY)
    with pytest.raises(EnvelopeError, match="different key"):
        open_sealed(envelope, ALICE)  # not even the sender can open what it sealed to the node


def test_recipient_key_id_rewritten_for_another_key(envelope: bytes) -> None:
    # Redirecting the envelope to Mallory's key id gets past the addressing check but the box
    # was made for the node's key, so authentication fails.
    redirected = envelope[:34] + key_id(bytes(MALLORY.box_key.public_key)) + envelope[42:]
    with pytest.raises(EnvelopeError, match="authentication"):
        open_sealed(redirected, MALLORY)


def test_sender_cannot_claim_another_did() -> None:
    # Mallory writes Alice's key into the header and boxes with her own key.
    header = (
        bytes([1, 1]) + bytes(ALICE.signing_key.verify_key)
        + key_id(bytes(NODE.box_key.public_key))
    )
    nonce = nacl.utils.random(NONCE_LENGTH)
    box = nacl.public.Box(MALLORY.box_key, NODE.box_key.public_key)
    forged = header + bytes(box.encrypt(header + PAYLOAD, nonce))
    with pytest.raises(EnvelopeError, match="authentication"):
        open_sealed(forged, NODE)


def test_sender_key_swapped_in_header(envelope: bytes) -> None:
    swapped = envelope[:2] + bytes(MALLORY.signing_key.verify_key) + envelope[34:]
    with pytest.raises(EnvelopeError):
        open_sealed(swapped, NODE)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version(envelope: bytes, version: int) -> None:
    with pytest.raises(EnvelopeError, match="version"):
        open_sealed(bytes([version]) + envelope[1:], NODE)


@pytest.mark.parametrize("profile", [0, 2, 255])
def test_wrong_profile(envelope: bytes, profile: int) -> None:
    with pytest.raises(EnvelopeError, match="intl"):
        open_sealed(envelope[:1] + bytes([profile]) + envelope[2:], NODE)


def test_inner_header_mismatch() -> None:
    # A sender that boxes a different header than it sends: the copies must agree.
    recipient_id = key_id(bytes(NODE.box_key.public_key))
    outer = bytes([1, 1]) + bytes(ALICE.signing_key.verify_key) + recipient_id
    inner = bytes([1, 2]) + bytes(ALICE.signing_key.verify_key) + recipient_id
    box = nacl.public.Box(ALICE.box_key, NODE.box_key.public_key)
    sealed = outer + bytes(box.encrypt(inner + PAYLOAD, nacl.utils.random(NONCE_LENGTH)))
    with pytest.raises(EnvelopeError, match="header was altered"):
        open_sealed(sealed, NODE)


@pytest.mark.parametrize(
    "did", ["", "did:web:node.example", "did:key:z6Mk", "did:key:zzzz"],
    ids=["empty", "did-web", "short", "unsupported"],
)
def test_seal_to_malformed_did(did: str) -> None:
    with pytest.raises(EnvelopeError, match="cannot seal"):
        seal(PAYLOAD, ALICE, did)


@pytest.mark.parametrize(
    "point", [bytes(32), bytes([1]) + bytes(31)], ids=["zero-point", "one-point"]
)
def test_seal_to_low_order_x25519_did(point: bytes) -> None:
    # A did:key holding a low-order X25519 point gives an all-zero shared secret; libsodium
    # refuses it, and the caller must see an EnvelopeError, not a library RuntimeError.
    did = "did:key:" + multibase_encode(b"\xec\x01", point)
    with pytest.raises(EnvelopeError):
        seal(PAYLOAD, ALICE, did)


def test_errors_do_not_echo_payload(envelope: bytes) -> None:
    for damaged in (envelope[:-1], _flip(envelope, 80, 0), envelope):
        recipient = MALLORY if damaged is envelope else NODE
        with pytest.raises(EnvelopeError) as info:
            open_sealed(damaged, recipient)
        assert PAYLOAD.decode() not in str(info.value)
        assert "order_total" not in str(info.value)
