"""SM2 interoperability with the ``openssl`` 3.0 command line, both ways.

OpenSSL 3.0 signs and verifies SM2 over raw messages with ``pkeyutl -rawin -digest sm3``; it
uses an empty user ID unless told otherwise, so every call passes
``-pkeyopt distid:1234567812345678`` (GM/T 0009's default, which ``consent.sm`` uses). Keys
travel as PKCS#8 / SubjectPublicKeyInfo PEM, signatures as DER SEQUENCE {r, s}, ciphertexts as
GM/T 0009 DER. A key whose public x coordinate starts with 04 is included on purpose (gmssl's
``lstrip("04")`` pitfall).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from consent.errors import SignatureError
from consent.sm import (
    SM2PrivateKey,
    SM2PublicKey,
    sm2_ciphertext_from_der,
    sm2_ciphertext_to_der,
    sm2_signature_from_der,
    sm2_signature_to_der,
)

DISTID = ["-pkeyopt", "distid:1234567812345678"]
# d whose public key x begins with 04 (the GM/T 0003.5 Annex C ephemeral k).
KEY_04 = "59276e27d506861a16680f3ad9c02dccef3cc1fa3cdbe4ce6d54b80deac1bc21"


def _openssl(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("the openssl command is required for the interop tests")
    return subprocess.run([binary, *map(str, args)], capture_output=True, check=check)


@pytest.fixture(params=["random", "x-starts-04"])
def our_key(request: pytest.FixtureRequest) -> SM2PrivateKey:
    return SM2PrivateKey.generate() if request.param == "random" else SM2PrivateKey.from_hex(KEY_04)


def test_openssl_version_has_sm2_pkeyutl() -> None:
    assert _openssl("version").stdout.startswith(b"OpenSSL 3.")


def test_ours_sign_openssl_verifies(our_key: SM2PrivateKey, tmp_path: Path) -> None:
    public_pem = tmp_path / "pub.pem"
    public_pem.write_bytes(our_key.public_key().to_pem())
    message = tmp_path / "msg"
    message.write_bytes(b"grant digest 42")
    signature = tmp_path / "sig.der"
    signature.write_bytes(sm2_signature_to_der(our_key.sign(b"grant digest 42")))
    verify = ["pkeyutl", "-verify", "-pubin", "-inkey", public_pem, "-rawin", "-digest", "sm3"]
    ok = _openssl(*verify, "-in", message, "-sigfile", signature, *DISTID, check=False)
    assert ok.returncode == 0, ok.stderr
    assert b"Signature Verified Successfully" in ok.stdout
    # OpenSSL really checks: another message fails.
    message.write_bytes(b"grant digest 43")
    bad = _openssl(*verify, "-in", message, "-sigfile", signature, *DISTID, check=False)
    assert bad.returncode != 0


def test_openssl_signs_ours_verifies(tmp_path: Path) -> None:
    key_pem = tmp_path / "key.pem"
    _openssl("genpkey", "-algorithm", "SM2", "-out", key_pem)
    public_pem = _openssl("pkey", "-in", key_pem, "-pubout").stdout
    message = tmp_path / "msg"
    message.write_bytes(b"revocation 7")
    sign = ["pkeyutl", "-sign", "-inkey", key_pem, "-rawin", "-digest", "sm3", "-in", message]
    der = _openssl(*sign, *DISTID).stdout
    public = SM2PublicKey.from_pem(public_pem)
    public.verify(b"revocation 7", sm2_signature_from_der(der))
    with pytest.raises(SignatureError):
        public.verify(b"revocation 8", sm2_signature_from_der(der))
    # The private key OpenSSL wrote loads here and matches the public key it printed.
    ours = SM2PrivateKey.from_pem(key_pem.read_bytes())
    assert ours.public_key() == public
    assert ours.to_pem() == key_pem.read_bytes()


def test_openssl_reads_our_key_files(our_key: SM2PrivateKey, tmp_path: Path) -> None:
    key_pem = tmp_path / "key.pem"
    key_pem.write_bytes(our_key.to_pem())
    printed = _openssl("pkey", "-in", key_pem, "-pubout").stdout
    assert printed == our_key.public_key().to_pem()


def test_ours_encrypt_openssl_decrypts(our_key: SM2PrivateKey, tmp_path: Path) -> None:
    key_pem = tmp_path / "key.pem"
    key_pem.write_bytes(our_key.to_pem())
    ciphertext = tmp_path / "ct.der"
    ciphertext.write_bytes(sm2_ciphertext_to_der(our_key.public_key().encrypt(b"session key!")))
    out = _openssl("pkeyutl", "-decrypt", "-inkey", key_pem, "-in", ciphertext)
    assert out.stdout == b"session key!"


def test_openssl_encrypts_ours_decrypts(our_key: SM2PrivateKey, tmp_path: Path) -> None:
    public_pem = tmp_path / "pub.pem"
    public_pem.write_bytes(our_key.public_key().to_pem())
    plaintext = tmp_path / "pt"
    plaintext.write_bytes(bytes(range(40)))
    der = _openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", public_pem, "-in", plaintext).stdout
    assert our_key.decrypt(sm2_ciphertext_from_der(der)) == bytes(range(40))
