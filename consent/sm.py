"""SM3, SM4 and SM2: the Chinese national-standard primitives of the ``gm`` profile.

- SM3 hash, GB/T 32905-2016, and HMAC-SM3 (RFC 2104) — OpenSSL through ``cryptography``.
- SM4 block cipher, GB/T 32907-2016, as the AEAD SM4-GCM (NIST SP 800-38D with SM4, RFC 8998)
  — OpenSSL through ``cryptography``'s low-level ``Cipher`` API, the only place it exposes SM4-GCM.
- SM2 on the curve sm2p256v1, GB/T 32918.1-5 / GM/T 0003-2012: signatures with SM3 and the user
  information hash Z_A (Part 2, default user ID ``1234567812345678`` per GM/T 0009-2012) and
  public-key encryption with the ciphertext layout C1||C3||C2 (Part 4). Point multiplication
  comes from ``gmssl`` 3.2.2, which is pure Python and slow (about 130 signatures per second),
  so SM2 must never be on a per-query path; see ``consent.envelope_gm``.

``gmssl`` has pitfalls this module works around, and nothing else should call it directly:

- it picks signing and encryption nonces with ``random.choice``; here every nonce comes from
  ``secrets``, and encryption is composed here from its point multiplication so that the
  ephemeral key is ours;
- its constructor strips a leading ``04`` with ``str.lstrip``, which mangles about one public
  key in eight; here the 128-hex-digit key is assigned after construction;
- its decryption never checks C3 and never checks that C1 lies on the curve; here both are
  checked (in constant time for C3) before any plaintext is returned;
- its hashing is pure Python; here Z_A and e = SM3(Z_A || M) are computed with OpenSSL's SM3
  and only the scalar arithmetic is left to ``gmssl``.

The pure-Python arithmetic is not constant-time. Keys live on servers the operator controls,
and the profile's design keeps SM2 off the per-query path, which bounds what timing can leak.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from Cryptodome.Util.asn1 import (
    DerBitString,
    DerInteger,
    DerObjectId,
    DerOctetString,
    DerSequence,
)
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from gmssl.sm2 import CryptSM2

from consent.errors import ConsentError, EnvelopeError, SignatureError

__all__ = [
    "DEFAULT_USER_ID",
    "SM2P256V1",
    "SM4GCM",
    "SM2Curve",
    "SM2KeyError",
    "SM2PrivateKey",
    "SM2PublicKey",
    "hmac_sm3",
    "sm2_ciphertext_from_der",
    "sm2_ciphertext_to_der",
    "sm2_kdf",
    "sm2_signature_from_der",
    "sm2_signature_to_der",
    "sm2_za",
    "sm3",
]

DEFAULT_USER_ID = b"1234567812345678"
SM4_KEY_BYTES = 16
GCM_TAG_BYTES = 16
SM3_BYTES = 32

# OIDs of the X.509 / PKCS#8 encodings OpenSSL uses for SM2 keys.
_OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_OID_SM2 = "1.2.156.10197.1.301"


class SM2KeyError(ConsentError, ValueError):
    """An SM2 key or signature encoding is malformed, or a point is not on the curve."""


# --------------------------------------------------------------------------- SM3


def _der_sequence(der: bytes) -> list[Any]:
    """A DER SEQUENCE's items (ints for INTEGERs, the encoded bytes of anything else), typed
    here once: pycryptodomex's stubs type DerSequence's items as None and give it no
    ``__iter__`` (it iterates through ``__getitem__``)."""
    sequence: Any = DerSequence().decode(der, strict=True)
    return list(sequence)


def sm3(data: bytes) -> bytes:
    """The 32-byte SM3 digest of ``data`` (GB/T 32905-2016), computed by OpenSSL."""
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize()


def hmac_sm3(key: bytes, data: bytes) -> bytes:
    """HMAC-SM3 (RFC 2104 with SM3): a 32-byte tag."""
    mac = crypto_hmac.HMAC(key, hashes.SM3())
    mac.update(data)
    return mac.finalize()


# --------------------------------------------------------------------------- SM4-GCM


class SM4GCM:
    """SM4 in Galois/Counter Mode, an AEAD with the interface of ``cryptography``'s AESGCM.

    ``encrypt`` returns ciphertext || 16-byte tag; ``decrypt`` verifies the full 16-byte tag
    before returning anything. Nonces are 8 to 128 bytes (OpenSSL's limits through
    ``cryptography``); 12 bytes is the standard size and the only one callers should pick.
    A nonce must never repeat under one key.
    """

    __slots__ = ("_algorithm",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != SM4_KEY_BYTES:
            raise ValueError("an SM4 key is exactly 16 bytes")
        # The algorithm object only holds the key; OpenSSL schedules it per context.
        self._algorithm = algorithms.SM4(bytes(key))

    @staticmethod
    def generate_key() -> bytes:
        return secrets.token_bytes(SM4_KEY_BYTES)

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
        encryptor = Cipher(self._algorithm, _gcm_mode(nonce)).encryptor()
        if aad:
            encryptor.authenticate_additional_data(aad)
        # One output buffer, so a 1 MiB message is not copied again to append the tag.
        out = bytearray(len(plaintext) + GCM_TAG_BYTES)
        written = encryptor.update_into(plaintext, out) if plaintext else 0
        encryptor.finalize()
        out[written:] = encryptor.tag  # GCM is a stream mode: written == len(plaintext)
        return bytes(out)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes = b"") -> bytes:
        if len(data) < GCM_TAG_BYTES:
            raise EnvelopeError(
                "the SM4-GCM ciphertext is shorter than its 16-byte tag: it was truncated"
            )
        view = memoryview(data)
        # min_tag_length pins the tag at 16 bytes, so a truncated tag can never be accepted.
        mode = _gcm_mode(nonce, bytes(view[-GCM_TAG_BYTES:]))
        decryptor = Cipher(self._algorithm, mode).decryptor()
        if aad:
            decryptor.authenticate_additional_data(aad)
        body = view[:-GCM_TAG_BYTES]
        plaintext = decryptor.update(body) if len(body) else b""
        try:
            return plaintext + decryptor.finalize()
        except InvalidTag:
            raise EnvelopeError(
                "the SM4-GCM tag does not verify: the data, its associated data, the nonce "
                "or the key is wrong"
            ) from None


def _gcm_mode(nonce: bytes, tag: bytes | None = None) -> modes.GCM:
    if not isinstance(nonce, bytes | bytearray) or not 8 <= len(nonce) <= 128:
        raise EnvelopeError("an SM4-GCM nonce must be 8 to 128 bytes (12 is standard)")
    return modes.GCM(bytes(nonce), tag, min_tag_length=GCM_TAG_BYTES)


# --------------------------------------------------------------------------- SM2


@dataclass(frozen=True)
class SM2Curve:
    """Domain parameters of a prime-field curve y^2 = x^3 + ax + b (GB/T 32918.1)."""

    name: str
    p: int
    a: int
    b: int
    gx: int
    gy: int
    n: int

    @classmethod
    def from_hex(cls, name: str, *, p: str, a: str, b: str, gx: str, gy: str, n: str) -> SM2Curve:
        return cls(name, int(p, 16), int(a, 16), int(b, 16), int(gx, 16), int(gy, 16), int(n, 16))

    def contains(self, x: int, y: int) -> bool:
        if not (0 <= x < self.p and 0 <= y < self.p):
            return False
        return (y * y - (x * x * x + self.a * x + self.b)) % self.p == 0

    @cached_property
    def gmssl_table(self) -> dict[str, str]:
        """The curve in the hex-string form ``gmssl.sm2.CryptSM2`` expects."""
        return {
            "n": f"{self.n:064X}",
            "p": f"{self.p:064X}",
            "g": f"{self.gx:064x}{self.gy:064x}",
            "a": f"{self.a:064X}",
            "b": f"{self.b:064X}",
        }


SM2P256V1 = SM2Curve.from_hex(
    "sm2p256v1",
    p="FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF",
    a="FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC",
    b="28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93",
    gx="32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7",
    gy="BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0",
    n="FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123",
)


def _engine(curve: SM2Curve, private_hex: str = "", public_hex: str = "") -> CryptSM2:
    engine = CryptSM2(private_key=private_hex, public_key="", ecc_table=curve.gmssl_table)
    # Assigned after construction: the constructor's lstrip("04") corrupts some keys.
    engine.public_key = public_hex
    return engine


def _multiply(curve: SM2Curve, k: int, point_hex: str) -> tuple[int, int]:
    """k * P with gmssl's Jacobian arithmetic; raises if the result is the point at infinity."""
    result = _engine(curve)._kg(k, point_hex)
    if not result:
        raise SM2KeyError("an SM2 point multiplication gave the point at infinity")
    return int(result[:64], 16), int(result[64:128], 16)


def _random_scalar(curve: SM2Curve) -> int:
    """A uniform scalar in [1, n-1] from the OS CSPRNG (never ``random``)."""
    return secrets.randbelow(curve.n - 1) + 1


def _int_bytes(value: int) -> bytes:
    return value.to_bytes(32, "big")


def sm2_za(
    public_key: SM2PublicKey, user_id: bytes = DEFAULT_USER_ID, curve: SM2Curve | None = None
) -> bytes:
    """Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA) (GB/T 32918.2 §5.5)."""
    curve = curve or public_key.curve
    entl = len(user_id) * 8
    if entl > 0xFFFF:
        raise SM2KeyError("an SM2 user ID is at most 8191 bytes")
    return sm3(
        entl.to_bytes(2, "big")
        + user_id
        + b"".join(_int_bytes(v) for v in (curve.a, curve.b, curve.gx, curve.gy))
        + _int_bytes(public_key.x)
        + _int_bytes(public_key.y)
    )


def sm2_kdf(z: bytes, length: int) -> bytes:
    """The SM3-based key derivation function of GB/T 32918.4 §5.4.3 (counter from 1)."""
    blocks = -(-length // SM3_BYTES)
    return b"".join(sm3(z + counter.to_bytes(4, "big")) for counter in range(1, blocks + 1))[
        :length
    ]


def _sm3_e(public_key: SM2PublicKey, data: bytes, user_id: bytes) -> bytes:
    return sm3(sm2_za(public_key, user_id) + data)


class SM2PublicKey:
    """An SM2 public point, validated to lie on its curve."""

    __slots__ = ("curve", "x", "y")

    def __init__(self, x: int, y: int, curve: SM2Curve = SM2P256V1) -> None:
        if not curve.contains(x, y):
            raise SM2KeyError(f"the SM2 public key is not a point on {curve.name}")
        self.x, self.y, self.curve = x, y, curve

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SM2PublicKey):
            return NotImplemented
        return (self.x, self.y, self.curve) == (other.x, other.y, other.curve)

    def __hash__(self) -> int:
        return hash((self.x, self.y, self.curve.name))

    def __repr__(self) -> str:
        return f"SM2PublicKey({self.to_hex()[:18]}…, {self.curve.name})"

    # ---- encodings

    @classmethod
    def from_bytes(cls, data: bytes, curve: SM2Curve = SM2P256V1) -> SM2PublicKey:
        """Parse the uncompressed point 04 || x || y (65 bytes)."""
        if len(data) != 65 or data[0] != 0x04:
            raise SM2KeyError(
                "an SM2 public key must be the 65-byte uncompressed point 04 || x || y"
            )
        return cls(int.from_bytes(data[1:33], "big"), int.from_bytes(data[33:], "big"), curve)

    def to_bytes(self) -> bytes:
        return b"\x04" + _int_bytes(self.x) + _int_bytes(self.y)

    @classmethod
    def from_hex(cls, text: str, curve: SM2Curve = SM2P256V1) -> SM2PublicKey:
        """Parse 130 hex digits: 04 || x || y."""
        try:
            raw = bytes.fromhex(text)
        except (ValueError, TypeError):
            raise SM2KeyError("an SM2 public key in hex must be 130 hex digits") from None
        return cls.from_bytes(raw, curve)

    def to_hex(self) -> str:
        return self.to_bytes().hex()

    @classmethod
    def from_der(cls, der: bytes) -> SM2PublicKey:
        """Parse an X.509 SubjectPublicKeyInfo for id-ecPublicKey on the SM2 curve."""
        try:
            spki = _der_sequence(der)
            algorithm = _der_sequence(spki[0])
            oids = [DerObjectId().decode(item, strict=True).value for item in algorithm]
            point = DerBitString().decode(spki[1], strict=True).value
        except (ValueError, IndexError, TypeError, EOFError):
            raise SM2KeyError("the SM2 public key is not a valid SubjectPublicKeyInfo") from None
        if len(spki) != 2 or oids != [_OID_EC_PUBLIC_KEY, _OID_SM2]:
            raise SM2KeyError("the public key is not an SM2 (sm2p256v1) key")
        return cls.from_bytes(point)

    def to_der(self) -> bytes:
        algorithm = DerSequence([DerObjectId(_OID_EC_PUBLIC_KEY), DerObjectId(_OID_SM2)])
        return DerSequence([algorithm, DerBitString(self.to_bytes())]).encode()

    @classmethod
    def from_pem(cls, pem: bytes) -> SM2PublicKey:
        return cls.from_der(_pem_body(pem, "PUBLIC KEY"))

    def to_pem(self) -> bytes:
        return _pem("PUBLIC KEY", self.to_der())

    @property
    def _xy_hex(self) -> str:
        return f"{self.x:064x}{self.y:064x}"

    # ---- operations

    def verify(self, data: bytes, signature: bytes, user_id: bytes = DEFAULT_USER_ID) -> None:
        """Check a 64-byte r || s SM2 signature over ``data`` (SM3 with Z_A); raise if bad."""
        self.verify_digest(_sm3_e(self, data, user_id), signature)

    def verify_digest(self, e: bytes, signature: bytes) -> None:
        """Check r || s against a precomputed e = SM3(Z_A || M)."""
        if len(signature) != 64:
            raise SignatureError("an SM2 signature is 64 bytes (r || s)")
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        # gmssl does not range-check r and s; GB/T 32918.2 §7.1 B1-B2 requires it.
        if not (1 <= r < self.curve.n and 1 <= s < self.curve.n):
            raise SignatureError("the SM2 signature is out of range")
        ok = _engine(self.curve, public_hex=self._xy_hex).verify(signature.hex(), e)
        if ok is not True:
            raise SignatureError("the SM2 signature does not verify with this public key")

    def encrypt(self, plaintext: bytes) -> bytes:
        """SM2 public-key encryption (GB/T 32918.4): C1 || C3 || C2, C1 = 04 || x1 || y1."""
        while True:
            ciphertext = self._encrypt_with_k(plaintext, _random_scalar(self.curve))
            if ciphertext is not None:
                return ciphertext

    def _encrypt_with_k(self, plaintext: bytes, k: int) -> bytes | None:
        """Encrypt with a given ephemeral scalar; only vector tests pass their own k."""
        if not plaintext:
            raise ValueError("SM2 encryption needs a non-empty plaintext")
        curve = self.curve
        x1, y1 = _multiply(curve, k, curve.gmssl_table["g"])
        x2, y2 = _multiply(curve, k, self._xy_hex)
        t = sm2_kdf(_int_bytes(x2) + _int_bytes(y2), len(plaintext))
        if not any(t):
            return None  # §6.1 A5: an all-zero key stream means pick another k
        c2 = _xor(plaintext, t)
        c3 = sm3(_int_bytes(x2) + plaintext + _int_bytes(y2))
        return b"\x04" + _int_bytes(x1) + _int_bytes(y1) + c3 + c2


class SM2PrivateKey:
    """An SM2 private scalar d in [1, n-2] with its public point."""

    __slots__ = ("_d", "_public", "curve")

    def __init__(self, d: int, curve: SM2Curve = SM2P256V1) -> None:
        # d = n-1 has no (1 + d)^-1 mod n, which signing needs (GB/T 32918.1 §6.1).
        if not 1 <= d <= curve.n - 2:
            raise SM2KeyError("an SM2 private key must be an integer in [1, n-2]")
        self._d, self.curve = d, curve
        self._public: SM2PublicKey | None = None

    def __repr__(self) -> str:
        return f"SM2PrivateKey(<secret>, {self.curve.name})"

    @classmethod
    def generate(cls, curve: SM2Curve = SM2P256V1) -> SM2PrivateKey:
        return cls(secrets.randbelow(curve.n - 2) + 1, curve)

    @classmethod
    def from_hex(cls, text: str, curve: SM2Curve = SM2P256V1) -> SM2PrivateKey:
        """Parse the 64-hex-digit big-endian scalar."""
        if not isinstance(text, str) or len(text) != 64:
            raise SM2KeyError("an SM2 private key in hex must be 64 hex digits")
        try:
            scalar = int(text, 16)
        except ValueError:
            raise SM2KeyError("an SM2 private key in hex must be 64 hex digits") from None
        return cls(scalar, curve)

    def to_hex(self) -> str:
        return f"{self._d:064x}"

    def public_key(self) -> SM2PublicKey:
        """The public point d·G (computed once: it costs a pure-Python multiplication)."""
        if self._public is None:
            x, y = _multiply(self.curve, self._d, self.curve.gmssl_table["g"])
            self._public = SM2PublicKey(x, y, self.curve)
        return self._public

    # ---- encodings

    @classmethod
    def from_der(cls, der: bytes) -> SM2PrivateKey:
        """Parse PKCS#8 (RFC 5208) wrapping an RFC 5915 ECPrivateKey on the SM2 curve."""
        try:
            outer = _der_sequence(der)
            algorithm = _der_sequence(outer[1])
            oids = [DerObjectId().decode(item, strict=True).value for item in algorithm]
            inner_der = DerOctetString().decode(outer[2], strict=True).payload
            inner = _der_sequence(inner_der)
            scalar = DerOctetString().decode(inner[1], strict=True).payload
            embedded = [item for item in inner[2:] if item[:1] == b"\xa1"]
        except (ValueError, IndexError, TypeError, EOFError):
            raise SM2KeyError("the SM2 private key is not a valid PKCS#8 document") from None
        if outer[0] != 0 or inner[0] != 1 or oids != [_OID_EC_PUBLIC_KEY, _OID_SM2]:
            raise SM2KeyError("the private key is not a PKCS#8 SM2 (sm2p256v1) key")
        key = cls(int.from_bytes(scalar, "big"))
        if embedded and not embedded[0].endswith(key.public_key().to_bytes()):
            raise SM2KeyError("the public key inside the PKCS#8 document does not match")
        return key

    def to_der(self) -> bytes:
        algorithm = DerSequence([DerObjectId(_OID_EC_PUBLIC_KEY), DerObjectId(_OID_SM2)])
        inner = DerSequence(
            [
                DerInteger(1),
                DerOctetString(_int_bytes(self._d)),
                DerBitString(self.public_key().to_bytes(), explicit=1),
            ]
        )
        return DerSequence([DerInteger(0), algorithm, DerOctetString(inner.encode())]).encode()

    @classmethod
    def from_pem(cls, pem: bytes) -> SM2PrivateKey:
        return cls.from_der(_pem_body(pem, "PRIVATE KEY"))

    def to_pem(self) -> bytes:
        return _pem("PRIVATE KEY", self.to_der())

    # ---- operations

    def sign(self, data: bytes, user_id: bytes = DEFAULT_USER_ID) -> bytes:
        """SM2 signature with SM3 over Z_A || data: 64 bytes r || s."""
        e = _sm3_e(self.public_key(), data, user_id)
        while True:
            signature = self._sign_digest_with_k(e, _random_scalar(self.curve))
            if signature is not None:
                return signature

    def _sign_digest_with_k(self, e: bytes, k: int) -> bytes | None:
        """Sign e with a given nonce; only vector tests pass their own k."""
        engine = _engine(self.curve, private_hex=self.to_hex())
        signature_hex = engine.sign(e, f"{k:064x}")
        return bytes.fromhex(signature_hex) if signature_hex else None

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Decrypt C1 || C3 || C2 (GB/T 32918.4 §7), checking C1 and C3 before returning."""
        curve = self.curve
        if len(ciphertext) < 65 + SM3_BYTES + 1:
            raise EnvelopeError("the SM2 ciphertext is too short: it was truncated")
        try:
            c1 = SM2PublicKey.from_bytes(ciphertext[:65], curve)
        except SM2KeyError:
            raise EnvelopeError("the SM2 ciphertext's C1 is not a point on the curve") from None
        c3, c2 = ciphertext[65 : 65 + SM3_BYTES], ciphertext[65 + SM3_BYTES :]
        x2, y2 = _multiply(curve, self._d, c1._xy_hex)
        t = sm2_kdf(_int_bytes(x2) + _int_bytes(y2), len(c2))
        if not any(t):
            raise EnvelopeError("the SM2 ciphertext is invalid (all-zero key stream)")
        plaintext = _xor(c2, t)
        if not hmac.compare_digest(sm3(_int_bytes(x2) + plaintext + _int_bytes(y2)), c3):
            raise EnvelopeError(
                "the SM2 ciphertext does not decrypt with this key: it was tampered with "
                "or sealed to another key"
            )
        return plaintext


# --------------------------------------------------------------------------- encodings


def sm2_signature_to_der(signature: bytes) -> bytes:
    """r || s to the DER SEQUENCE { r INTEGER, s INTEGER } that OpenSSL reads."""
    if len(signature) != 64:
        raise SignatureError("an SM2 signature is 64 bytes (r || s)")
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    return encode_dss_signature(r, s)


def sm2_signature_from_der(der: bytes) -> bytes:
    """The DER SEQUENCE { r, s } that OpenSSL writes, to 64 bytes r || s."""
    try:
        r, s = decode_dss_signature(der)
    except ValueError:
        raise SignatureError("the SM2 signature is not a valid DER SEQUENCE of r and s") from None
    if not (0 < r < 2**256 and 0 < s < 2**256):
        raise SignatureError("the SM2 signature is out of range")
    return _int_bytes(r) + _int_bytes(s)


def sm2_ciphertext_to_der(ciphertext: bytes) -> bytes:
    """C1 || C3 || C2 to GM/T 0009-2012 DER: SEQUENCE { x, y INTEGER; C3, C2 OCTET STRING }."""
    if len(ciphertext) < 65 + SM3_BYTES + 1 or ciphertext[0] != 0x04:
        raise EnvelopeError("the SM2 ciphertext is too short or has no uncompressed C1")
    x = int.from_bytes(ciphertext[1:33], "big")
    y = int.from_bytes(ciphertext[33:65], "big")
    return DerSequence(
        [
            DerInteger(x),
            DerInteger(y),
            DerOctetString(ciphertext[65 : 65 + SM3_BYTES]),
            DerOctetString(ciphertext[65 + SM3_BYTES :]),
        ]
    ).encode()


def sm2_ciphertext_from_der(der: bytes) -> bytes:
    """GM/T 0009-2012 DER (what OpenSSL writes) to C1 || C3 || C2."""
    try:
        items = _der_sequence(der)
        x, y = int(items[0]), int(items[1])
        c3 = DerOctetString().decode(items[2], strict=True).payload
        c2 = DerOctetString().decode(items[3], strict=True).payload
    except (ValueError, IndexError, TypeError, EOFError):
        raise EnvelopeError("the SM2 ciphertext is not valid GM/T 0009 DER") from None
    in_range = 0 <= x < 2**256 and 0 <= y < 2**256
    if len(items) != 4 or len(c3) != SM3_BYTES or not c2 or not in_range:
        raise EnvelopeError("the SM2 ciphertext is not valid GM/T 0009 DER")
    return b"\x04" + _int_bytes(x) + _int_bytes(y) + c3 + c2


def _xor(left: bytes, right: bytes) -> bytes:
    return (int.from_bytes(left, "big") ^ int.from_bytes(right, "big")).to_bytes(len(left), "big")


def _pem(label: str, der: bytes) -> bytes:
    body = base64.b64encode(der)
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    begin, end = f"-----BEGIN {label}-----".encode(), f"-----END {label}-----".encode()
    return b"\n".join([begin, *lines, end]) + b"\n"


def _pem_body(pem: bytes, label: str) -> bytes:
    text = pem.decode("ascii", errors="replace").strip()
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    if not (text.startswith(begin) and text.endswith(end)):
        raise SM2KeyError(f"expected a PEM block labelled {label}")
    try:
        return base64.b64decode("".join(text[len(begin) : -len(end)].split()), validate=True)
    except binascii.Error:
        raise SM2KeyError(f"the PEM {label} block is not valid base64") from None
