"""SM4 (GB/T 32907-2016) and SM4-GCM / SM4-CCM against the shared vectors, read in place.

- ``sm4/sm4_vectors.json``: ECB (Annex A.1), the 1,000,000-encryption chain (Annex A.2), CBC,
  OFB, CFB128, CTR (OpenSSL's vectors) through ``cryptography``; GCM (RFC 8998 A.1) through the
  project's ``SM4GCM``; CCM (RFC 8998 A.2) as described below.
- ``sm4/wycheproof_sm4_gcm_test.json`` (104 cases): every case whose IV is 8-128 bytes runs
  through ``SM4GCM``. ``cryptography`` refuses other IV sizes, so for the 9 valid cases with
  1-6 or 257-byte IVs the test asserts that ``SM4GCM`` rejects the nonce with a clear error.
  The 8 cases with 1-6-byte IVs are then checked through OpenSSL's EVP interface (below). The
  one case with a 257-byte IV (tc90) cannot be run by any implementation available here:
  OpenSSL caps GCM IVs at 128 bytes (GCM_IV_MAX_SIZE), gmssl has no GCM, and the project does
  not hand-write GHASH; the test asserts that OpenSSL refuses it too. The 2 zero-length-IV
  cases are invalid and are rejected by both.
- ``sm4/wycheproof_sm4_ccm_test.json`` (184 cases): valid must decrypt and re-encrypt to the
  vector, invalid (bad tag, nonce or tag size) must be rejected.

Why CCM goes through ctypes: ``cryptography`` 50 has no CCM mode in its low-level ``Cipher``
API and its ``AESCCM`` is AES-only, and the system ``openssl`` 3.0 CLI has no SM4-CCM or
SM4-GCM (they arrived in OpenSSL 3.2; ``openssl enc`` refuses AEAD modes in any version). The
OpenSSL 3.5 ``libcrypto`` shipped inside the pinned ``psycopg[binary]`` wheel does have both,
so the tests drive it through its public EVP API with ``ctypes`` — real OpenSSL, no cipher
written here. If that library cannot be found the CCM tests fail (they never skip).
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers import modes as decrepit_modes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from consent.errors import EnvelopeError
from consent.sm import SM4GCM

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
SM4_FILE = json.loads((VECTORS / "sm4/sm4_vectors.json").read_text())
GCM_FILE = json.loads((VECTORS / "sm4/wycheproof_sm4_gcm_test.json").read_text())
CCM_FILE = json.loads((VECTORS / "sm4/wycheproof_sm4_ccm_test.json").read_text())

OPENSSL_GCM_MAX_IV = 128  # GCM_IV_MAX_SIZE in OpenSSL's providers (1024 bits)

_MODES = {
    "CBC": modes.CBC,
    "OFB": decrepit_modes.OFB,
    "CFB128": decrepit_modes.CFB,
    "CTR": modes.CTR,
}


def _by_mode(*names: str) -> list[pytest.param]:
    return [pytest.param(v, id=v["id"]) for v in SM4_FILE["vectors"] if v["mode"] in names]


def _wycheproof(data: dict) -> list[pytest.param]:
    return [
        pytest.param(test, id=f"tc{test['tcId']}-{test['result']}-iv{len(test['iv']) // 2}")
        for group in data["testGroups"]
        for test in group["tests"]
    ]


# --------------------------------------------------------------------------- OpenSSL EVP


class OpenSSLAead:
    """Just enough of libcrypto's EVP AEAD API to run vectors cryptography cannot."""

    _SET_IVLEN, _GET_TAG, _SET_TAG = 0x9, 0x10, 0x11

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.EVP_CIPHER_fetch.restype = ctypes.c_void_p
        lib.EVP_CIPHER_fetch.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
        lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
        lib.EVP_CipherInit_ex2.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int, ctypes.c_void_p]
        lib.EVP_CIPHER_CTX_ctrl.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        lib.EVP_CipherUpdate.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        lib.EVP_CipherFinal_ex.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_int),
        ]

    @classmethod
    def find(cls) -> OpenSSLAead:
        # Located without importing it: psycopg_binary refuses to be imported on its own.
        spec = importlib.util.find_spec("psycopg_binary")
        if spec is None or spec.origin is None:
            raise RuntimeError("psycopg[binary] is not installed: run make setup")
        site = Path(spec.origin).parent
        candidates = glob.glob(str(site.parent / "psycopg_binary.libs" / "libcrypto*"))
        candidates += glob.glob(str(site / ".dylibs" / "libcrypto*"))  # macOS wheels
        for path in [*candidates, "libcrypto.so.3"]:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            aead = cls(lib)
            if aead.fetch("SM4-CCM") and aead.fetch("SM4-GCM"):
                return aead
        raise RuntimeError(
            "no libcrypto with SM4-CCM and SM4-GCM found (psycopg[binary] ships one)"
        )

    def fetch(self, name: str) -> int | None:
        return self.lib.EVP_CIPHER_fetch(None, name.encode(), None)

    def seal(
        self, mode: str, key: bytes, iv: bytes, aad: bytes, msg: bytes, tag_len: int
    ) -> tuple[bytes, bytes] | None:
        """Encrypt; returns (ciphertext, tag) or None if OpenSSL refuses the parameters."""
        return self._run(mode, True, key, iv, aad, msg, None, tag_len)

    def open(
        self, mode: str, key: bytes, iv: bytes, aad: bytes, ct: bytes, tag: bytes
    ) -> bytes | None:
        """Decrypt and verify; returns the plaintext or None on any failure."""
        result = self._run(mode, False, key, iv, aad, ct, tag, len(tag))
        return None if result is None else result[0]

    def _run(
        self,
        mode: str,
        encrypt: bool,
        key: bytes,
        iv: bytes,
        aad: bytes,
        data: bytes,
        tag: bytes | None,
        tag_len: int,
    ) -> tuple[bytes, bytes] | None:
        lib, ccm = self.lib, mode == "CCM"
        ctx = lib.EVP_CIPHER_CTX_new()
        try:
            out = ctypes.create_string_buffer(len(data) + 32)
            n = ctypes.c_int(0)
            ok = lib.EVP_CipherInit_ex2(ctx, self.fetch(f"SM4-{mode}"), None, None, encrypt, None)
            ok = ok and lib.EVP_CIPHER_CTX_ctrl(ctx, self._SET_IVLEN, len(iv), None) > 0
            if ccm or not encrypt:
                # CCM fixes the tag length up front (and takes the tag itself when decrypting).
                tag_buf = ctypes.create_string_buffer(tag or b"\0" * tag_len, tag_len)
                tag_arg = tag_buf if not encrypt else None
                ok = ok and lib.EVP_CIPHER_CTX_ctrl(ctx, self._SET_TAG, tag_len, tag_arg) > 0
            ok = ok and lib.EVP_CipherInit_ex2(ctx, None, key, iv, encrypt, None) > 0
            if ccm:  # CCM needs the total length before any data or AAD
                ok = ok and lib.EVP_CipherUpdate(ctx, None, ctypes.byref(n), None, len(data)) > 0
            if aad:
                ok = ok and lib.EVP_CipherUpdate(ctx, None, ctypes.byref(n), aad, len(aad)) > 0
            ok = ok and lib.EVP_CipherUpdate(ctx, out, ctypes.byref(n), data, len(data)) > 0
            produced = n.value
            if not ok:
                return None
            final = ctypes.create_string_buffer(32)
            if not ccm and lib.EVP_CipherFinal_ex(ctx, final, ctypes.byref(n)) <= 0:
                return None  # GCM checks the tag here, CCM already did in the update
            if not encrypt:
                return out.raw[:produced], b""
            tag_out = ctypes.create_string_buffer(tag_len)
            if lib.EVP_CIPHER_CTX_ctrl(ctx, self._GET_TAG, tag_len, tag_out) <= 0:
                return None
            return out.raw[:produced], tag_out.raw
        finally:
            lib.EVP_CIPHER_CTX_free(ctx)


@pytest.fixture(scope="module")
def evp() -> OpenSSLAead:
    return OpenSSLAead.find()


# --------------------------------------------------------------------------- block modes


@pytest.mark.parametrize("vector", _by_mode("ECB"), ids=lambda v: v["id"])
def test_ecb(vector: dict) -> None:
    key, pt, ct = (bytes.fromhex(vector[k]) for k in ("key", "plaintext", "ciphertext"))
    cipher = Cipher(algorithms.SM4(key), modes.ECB())
    assert cipher.encryptor().update(pt) == ct
    assert cipher.decryptor().update(ct) == pt


@pytest.mark.slow
@pytest.mark.parametrize("vector", _by_mode("ECB-iterated"), ids=lambda v: v["id"])
def test_ecb_million_chain(vector: dict) -> None:
    key, block = bytes.fromhex(vector["key"]), bytes.fromhex(vector["plaintext"])
    # One encryptor context for the whole chain: ECB keeps no state between blocks, and
    # re-creating a context a million times would cost ~10x more.
    update = Cipher(algorithms.SM4(key), modes.ECB()).encryptor().update
    started = time.perf_counter()
    for _ in range(vector["iterations"]):
        block = update(block)
    assert block.hex() == vector["ciphertext"].lower()
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize("vector", _by_mode(*_MODES), ids=lambda v: v["id"])
def test_streaming_modes(vector: dict) -> None:
    key, iv, pt, ct = (bytes.fromhex(vector[k]) for k in ("key", "iv", "plaintext", "ciphertext"))
    cipher = Cipher(algorithms.SM4(key), _MODES[vector["mode"]](iv))
    enc = cipher.encryptor()
    assert enc.update(pt) + enc.finalize() == ct
    dec = cipher.decryptor()
    assert dec.update(ct) + dec.finalize() == pt


# --------------------------------------------------------------------------- GCM


@pytest.mark.parametrize("vector", _by_mode("GCM"), ids=lambda v: v["id"])
def test_gcm_rfc8998(vector: dict) -> None:
    key, iv, aad, pt, ct, tag = (
        bytes.fromhex(vector[k]) for k in ("key", "iv", "aad", "plaintext", "ciphertext", "tag")
    )
    aead = SM4GCM(key)
    assert aead.encrypt(iv, pt, aad) == ct + tag
    assert aead.decrypt(iv, ct + tag, aad) == pt
    with pytest.raises(EnvelopeError, match="tag does not verify"):
        aead.decrypt(iv, ct + tag, aad + b"x")


@pytest.mark.parametrize("test", _wycheproof(GCM_FILE))
def test_wycheproof_gcm(test: dict, evp: OpenSSLAead) -> None:
    key, iv, aad, msg, ct, tag = (
        bytes.fromhex(test[k]) for k in ("key", "iv", "aad", "msg", "ct", "tag")
    )
    aead = SM4GCM(key)
    if not 8 <= len(iv) <= 128:
        # SM4GCM takes 8-128-byte nonces; anything else is refused before any crypto runs.
        with pytest.raises(EnvelopeError, match="nonce must be 8 to 128 bytes"):
            aead.decrypt(iv, ct + tag, aad)
        if test["result"] == "valid" and len(iv) <= OPENSSL_GCM_MAX_IV:
            # The vector itself still holds in OpenSSL, which takes 1-128-byte IVs.
            assert evp.seal("GCM", key, iv, aad, msg, 16) == (ct, tag)
            assert evp.open("GCM", key, iv, aad, ct, tag) == msg
        else:
            # Zero-length IVs are invalid; IVs over 128 bytes exceed GCM_IV_MAX_SIZE in OpenSSL.
            assert evp.seal("GCM", key, iv, aad, msg, 16) is None
            assert evp.open("GCM", key, iv, aad, ct, tag) is None
        return
    if test["result"] == "valid":
        assert aead.encrypt(iv, msg, aad) == ct + tag
        assert aead.decrypt(iv, ct + tag, aad) == msg
    else:
        with pytest.raises(EnvelopeError):
            aead.decrypt(iv, ct + tag, aad)


def test_gcm_rejects_truncated_tag_and_bad_sizes() -> None:
    aead = SM4GCM(bytes(16))
    sealed = aead.encrypt(bytes(12), b"field value", b"col")
    with pytest.raises(EnvelopeError, match="shorter than its 16-byte tag"):
        aead.decrypt(bytes(12), sealed[:15], b"col")
    # Dropping tag bytes must never verify, even though GCM permits short tags in general.
    for cut in (1, 4, 8):
        with pytest.raises(EnvelopeError):
            aead.decrypt(bytes(12), sealed[:-cut], b"col")
    with pytest.raises(ValueError, match="exactly 16 bytes"):
        SM4GCM(bytes(15))
    with pytest.raises(EnvelopeError, match="nonce"):
        aead.encrypt(b"", b"x")


def test_gcm_empty_plaintext_and_large_message() -> None:
    aead = SM4GCM(SM4GCM.generate_key())
    nonce = bytes(range(12))
    empty = aead.encrypt(nonce, b"", b"only aad")
    assert len(empty) == 16 and aead.decrypt(nonce, empty, b"only aad") == b""
    big = bytes(range(256)) * 4096  # 1 MiB
    sealed = aead.encrypt(nonce, big)
    assert len(sealed) == len(big) + 16 and aead.decrypt(nonce, sealed) == big
    flipped = bytearray(sealed)
    flipped[len(big) // 2] ^= 1
    with pytest.raises(EnvelopeError):
        aead.decrypt(nonce, bytes(flipped))


def test_gcm_agrees_with_openssl_evp(evp: OpenSSLAead) -> None:
    # Cross-check the wrapper against a second OpenSSL build on a fresh random case.
    key, nonce, aad, msg = SM4GCM.generate_key(), bytes(12), b"hdr", b"m" * 100
    sealed = SM4GCM(key).encrypt(nonce, msg, aad)
    assert evp.seal("GCM", key, nonce, aad, msg, 16) == (sealed[:-16], sealed[-16:])


# --------------------------------------------------------------------------- CCM


@pytest.mark.parametrize("vector", _by_mode("CCM"), ids=lambda v: v["id"])
def test_ccm_rfc8998(vector: dict, evp: OpenSSLAead) -> None:
    key, iv, aad, pt, ct, tag = (
        bytes.fromhex(vector[k]) for k in ("key", "iv", "aad", "plaintext", "ciphertext", "tag")
    )
    assert evp.seal("CCM", key, iv, aad, pt, vector["tag_len"]) == (ct, tag)
    assert evp.open("CCM", key, iv, aad, ct, tag) == pt
    assert evp.open("CCM", key, iv, aad, ct, bytes([tag[0] ^ 1]) + tag[1:]) is None


@pytest.mark.parametrize("test", _wycheproof(CCM_FILE))
def test_wycheproof_ccm(test: dict, evp: OpenSSLAead) -> None:
    key, iv, aad, msg, ct, tag = (
        bytes.fromhex(test[k]) for k in ("key", "iv", "aad", "msg", "ct", "tag")
    )
    if test["result"] == "valid":
        assert evp.seal("CCM", key, iv, aad, msg, len(tag)) == (ct, tag)
        assert evp.open("CCM", key, iv, aad, ct, tag) == msg
    else:
        assert evp.open("CCM", key, iv, aad, ct, tag) is None


@settings(max_examples=60, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16),
    nonce=st.binary(min_size=12, max_size=12),
    plaintext=st.binary(max_size=2048),
    aad=st.binary(max_size=64),
    data=st.data(),
)
def test_property_gcm_round_trip_and_tamper(
    key: bytes, nonce: bytes, plaintext: bytes, aad: bytes, data: st.DataObject
) -> None:
    aead = SM4GCM(key)
    sealed = aead.encrypt(nonce, plaintext, aad)
    assert len(sealed) == len(plaintext) + 16
    assert aead.decrypt(nonce, sealed, aad) == plaintext
    index = data.draw(st.integers(0, len(sealed) - 1), label="index")
    tampered = bytearray(sealed)
    tampered[index] ^= data.draw(st.integers(1, 255), label="mask")
    with pytest.raises(EnvelopeError):
        aead.decrypt(nonce, bytes(tampered), aad)
