"""SM2 (GB/T 32918 / GM/T 0003) against ``sm2/sm2_vectors.json``, read in place:

- signature examples on the Fp-256 example curve (GB/T 32918.2 Annex A, user ID
  ALICE123@YAHOO.COM) and on sm2p256v1 (GM/T 0003.5 Annex A, ID 1234567812345678): public key
  from d, Z_A, e, the published (r, s) reproduced from the published k and verified;
- encryption examples (GM/T 0003.5 Annex C on sm2p256v1, GB/T 32918.4 Annex A on the example
  curve): C1 || C3 || C2 reproduced byte for byte from the published k, in raw and GM/T 0009
  DER form, and decrypted;
- OpenSSL's evppkey_sm2.txt: the PKCS#8 key, 3 verifications over precomputed digests, and
  one decryption.

Also the gmssl pitfalls: signing nonces do not come from ``random``, and a public key whose
x coordinate starts with the hex digits ``04`` still works.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from gmssl.sm2 import CryptSM2

from consent.errors import EnvelopeError, SignatureError
from consent.sm import (
    SM2P256V1,
    SM2Curve,
    SM2KeyError,
    SM2PrivateKey,
    SM2PublicKey,
    sm2_ciphertext_from_der,
    sm2_ciphertext_to_der,
    sm2_signature_from_der,
    sm2_signature_to_der,
    sm2_za,
    sm3,
)

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
SM2_FILE = json.loads((VECTORS / "sm2/sm2_vectors.json").read_text())
EVP = SM2_FILE["openssl_evp_vectors"]


def _curve(name: str) -> SM2Curve:
    params = SM2_FILE["curves"][name]
    return SM2Curve.from_hex(name, **{k: params[k] for k in ("p", "a", "b", "gx", "gy", "n")})


def _ids(vectors: list[dict]) -> list[pytest.param]:
    return [pytest.param(v, id=v["id"]) for v in vectors]


@pytest.fixture(scope="module")
def evp_key() -> SM2PrivateKey:
    return SM2PrivateKey.from_pem(EVP["private_key_pem"].encode())


def test_sm2p256v1_parameters_match_the_vectors() -> None:
    assert _curve("sm2p256v1") == SM2P256V1


# --------------------------------------------------------------------------- signatures


@pytest.mark.parametrize("vector", _ids(SM2_FILE["signature_vectors"]))
def test_signature_example(vector: dict) -> None:
    curve = _curve(vector["curve"])
    key = SM2PrivateKey.from_hex(vector["private_key"].lower(), curve)
    public = key.public_key()
    assert (public.x, public.y) == (
        int(vector["public_key_x"], 16),
        int(vector["public_key_y"], 16),
    )
    user_id, message = vector["user_id_ascii"].encode(), vector["message_ascii"].encode()
    za = sm2_za(public, user_id)
    assert za.hex() == vector["za"].lower()
    e = sm3(za + message)
    assert e.hex() == vector["e"].lower()
    published = bytes.fromhex(vector["r"] + vector["s"])
    # With the published k the signature is reproduced exactly ...
    assert key._sign_digest_with_k(e, int(vector["k"], 16)) == published
    # ... and the published (r, s) verifies, but not over another message or ID.
    public.verify(message, published, user_id)
    with pytest.raises(SignatureError):
        public.verify(message + b".", published, user_id)
    with pytest.raises(SignatureError):
        public.verify(message, published, b"1234567812345679")


@pytest.mark.parametrize("vector", _ids(SM2_FILE["signature_vectors"]))
def test_fresh_signatures_verify_and_differ(vector: dict) -> None:
    key = SM2PrivateKey.from_hex(vector["private_key"].lower(), _curve(vector["curve"]))
    user_id = vector["user_id_ascii"].encode()
    # Reseeding `random` must not repeat the nonce: gmssl's default would, leaking d.
    random.seed(7)
    first = key.sign(b"grant", user_id)
    random.seed(7)
    second = key.sign(b"grant", user_id)
    assert first != second and first[:32] != second[:32]
    key.public_key().verify(b"grant", first, user_id)
    key.public_key().verify(b"grant", second, user_id)


def test_signature_range_and_length_checks() -> None:
    key = SM2PrivateKey.generate()
    signature = key.sign(b"m")
    n = SM2P256V1.n
    with pytest.raises(SignatureError, match="64 bytes"):
        key.public_key().verify(b"m", signature[:63])
    for r, s in ((0, 1), (1, 0), (n, 1), (1, n)):
        with pytest.raises(SignatureError, match="out of range"):
            key.public_key().verify(b"m", r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    flipped = bytes([signature[0] ^ 0x80]) + signature[1:]
    with pytest.raises(SignatureError):
        key.public_key().verify(b"m", flipped)
    with pytest.raises(SignatureError, match="does not verify"):
        SM2PrivateKey.generate().public_key().verify(b"m", signature)


def test_public_key_starting_with_04_survives_gmssl_lstrip() -> None:
    # The Annex C ephemeral k gives the point C1, whose x starts with 04: gmssl's
    # constructor would strip those digits from "04..." and compute with a wrong key.
    vector = SM2_FILE["encryption_vectors"][0]
    key = SM2PrivateKey.from_hex(vector["k"].lower())
    assert key.public_key().to_hex()[2:4] == "04"
    assert key.public_key().x == int(vector["c1_x"], 16)
    signature = key.sign(b"payload")
    key.public_key().verify(b"payload", signature)
    # Round trip through the hex form other modules store.
    SM2PublicKey.from_hex(key.public_key().to_hex()).verify(b"payload", signature)


def test_interoperates_with_gmssl_sign_with_sm3() -> None:
    # Our Z_A/e path (OpenSSL SM3) and gmssl's own sign_with_sm3 must agree both ways.
    key = SM2PrivateKey.generate()
    xy = key.public_key().to_hex()[2:]
    engine = CryptSM2(private_key=key.to_hex(), public_key="")
    engine.public_key = xy
    theirs = bytes.fromhex(engine.sign_with_sm3(b"data", "%064x" % (SM2P256V1.n // 3)))
    key.public_key().verify(b"data", theirs)
    ours = key.sign(b"data")
    assert engine.verify_with_sm3(ours.hex(), b"data") is True


# --------------------------------------------------------------------------- encryption


@pytest.mark.parametrize("vector", _ids(SM2_FILE["encryption_vectors"]))
def test_encryption_example(vector: dict) -> None:
    curve = _curve(vector["curve"])
    key = SM2PrivateKey.from_hex(vector["private_key"].lower(), curve)
    message = vector["message_ascii"].encode()
    raw = bytes.fromhex("04" + vector["c1_x"] + vector["c1_y"] + vector["c3"] + vector["c2"])
    der = bytes.fromhex(vector["ciphertext_der"])
    assert key.public_key()._encrypt_with_k(message, int(vector["k"], 16)) == raw
    assert sm2_ciphertext_to_der(raw) == der
    assert sm2_ciphertext_from_der(der) == raw
    assert key.decrypt(raw) == message


@pytest.mark.parametrize("vector", _ids(SM2_FILE["encryption_vectors"]))
def test_decryption_rejects_tampering(vector: dict) -> None:
    curve = _curve(vector["curve"])
    key = SM2PrivateKey.from_hex(vector["private_key"].lower(), curve)
    raw = bytes.fromhex("04" + vector["c1_x"] + vector["c1_y"] + vector["c3"] + vector["c2"])
    for index in (1, 40, 70, len(raw) - 1):  # C1 x, C1 y, C3, C2
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        with pytest.raises(EnvelopeError):
            key.decrypt(bytes(tampered))
    with pytest.raises(EnvelopeError, match="truncated"):
        key.decrypt(raw[:97])
    other = SM2PrivateKey.generate(curve)
    with pytest.raises(EnvelopeError, match="another key"):
        other.decrypt(raw)


def test_fresh_encryption_round_trip() -> None:
    key = SM2PrivateKey.generate()
    secret = bytes(range(32))
    first, second = key.public_key().encrypt(secret), key.public_key().encrypt(secret)
    assert first != second and len(first) == 65 + 32 + 32
    assert key.decrypt(first) == key.decrypt(second) == secret
    with pytest.raises(ValueError, match="non-empty"):
        key.public_key().encrypt(b"")


# --------------------------------------------------------------------------- OpenSSL EVP


def test_openssl_pkcs8_key_round_trips(evp_key: SM2PrivateKey) -> None:
    assert evp_key.to_pem().decode() == EVP["private_key_pem"]
    assert SM2PublicKey.from_pem(evp_key.public_key().to_pem()) == evp_key.public_key()


@pytest.mark.parametrize(
    "vector", [pytest.param(v, id=f"verify-{i}-{v['digest']}") for i, v in enumerate(EVP["verify"])]
)
def test_openssl_verify_vectors(vector: dict, evp_key: SM2PrivateKey) -> None:
    # OpenSSL's EVP_PKEY_verify takes e itself (no Z_A), so these go through verify_digest.
    e = bytes.fromhex(vector["input"])
    signature = sm2_signature_from_der(bytes.fromhex(vector["signature_der"]))
    assert sm2_signature_to_der(signature) == bytes.fromhex(vector["signature_der"])
    assert vector["valid"] is True
    evp_key.public_key().verify_digest(e, signature)
    with pytest.raises(SignatureError):
        evp_key.public_key().verify_digest(bytes([e[0] ^ 1]) + e[1:], signature)


@pytest.mark.parametrize("vector", _ids([{"id": "decrypt-0", **EVP["decrypt"][0]}]))
def test_openssl_decrypt_vector(vector: dict, evp_key: SM2PrivateKey) -> None:
    raw = sm2_ciphertext_from_der(bytes.fromhex(vector["ciphertext_der"]))
    assert evp_key.decrypt(raw) == vector["plaintext_ascii"].encode()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("04" + "00" * 64, "not a point"),
        ("05" + "11" * 64, "65-byte uncompressed"),
        ("04" + "11" * 63, "65-byte uncompressed"),
        ("zz", "130 hex digits"),
    ],
)
def test_malformed_public_keys_are_rejected(text: str, message: str) -> None:
    with pytest.raises(SM2KeyError, match=message):
        SM2PublicKey.from_hex(text)


def test_malformed_private_keys_and_der_are_rejected() -> None:
    n = SM2P256V1.n
    for bad in ("00" * 32, f"{n - 1:064x}", f"{n:064x}"):
        with pytest.raises(SM2KeyError, match=r"\[1, n-2\]"):
            SM2PrivateKey.from_hex(bad)
    with pytest.raises(SM2KeyError, match="64 hex digits"):
        SM2PrivateKey.from_hex("abc")
    with pytest.raises(SM2KeyError, match="PKCS#8"):
        SM2PrivateKey.from_der(b"\x30\x03\x02\x01\x00")
    with pytest.raises(SM2KeyError, match="SubjectPublicKeyInfo"):
        SM2PublicKey.from_der(b"\x30\x00")
    with pytest.raises(SM2KeyError, match="PEM"):
        SM2PublicKey.from_pem(b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")
    with pytest.raises(EnvelopeError, match="GM/T 0009"):
        sm2_ciphertext_from_der(b"\x30\x03\x02\x01\x01")


def test_keys_never_show_secrets_in_repr() -> None:
    key = SM2PrivateKey.generate()
    assert key.to_hex() not in repr(key) and "secret" in repr(key)
    assert SM2PrivateKey.from_hex(key.to_hex()).public_key() == key.public_key()
