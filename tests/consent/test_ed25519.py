"""Ed25519 (RFC 8032, pure EdDSA) signing and verification against the official vectors.

- ``ed25519/rfc8032_ed25519.json``: RFC 8032 §7.1 TEST 1, 2, 3, 1024 and SHA(abc):
  ``Identity.sign`` reproduces the signature byte for byte and it verifies.
- ``ed25519/djb_ed25519_sign_input.txt``: all 1,024 lines of the classic ``sign.input``.
- ``ed25519/wycheproof_ed25519_test.json``: every valid signature verifies; every invalid one is
  refused by pynacl's ``VerifyKey.verify`` (the call ``consent.integrity`` makes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing
import pytest

from consent.did import did_from_ed25519, resolve
from consent.identity import Identity

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "ed25519"
DJB_LINES = 1024
SIGNATURE_LENGTH = 64


def _rfc8032() -> list[dict[str, Any]]:
    return json.loads((VECTORS / "rfc8032_ed25519.json").read_text())["vectors"]


def _wycheproof_cases() -> list[Any]:
    data = json.loads((VECTORS / "wycheproof_ed25519_test.json").read_text())
    cases = []
    for group in data["testGroups"]:
        for test in group["tests"]:
            case_id = f"tc{test['tcId']}-{test['result']}-{'+'.join(test['flags'])}"
            cases.append(pytest.param(group["publicKey"]["pk"], test, id=case_id))
    return cases


@pytest.fixture(scope="module")
def djb_lines(shared_dir: Path) -> list[str]:
    text = (shared_dir / "vectors" / "ed25519" / "djb_ed25519_sign_input.txt").read_text()
    return text.splitlines()


def _sign_and_check(secret: bytes, public: bytes, message: bytes, signature: bytes) -> None:
    identity = Identity.from_seed(secret)
    assert bytes(identity.signing_key.verify_key) == public
    assert identity.sign(message) == signature
    verify_key = resolve(identity.did).ed25519
    assert verify_key is not None
    assert verify_key.verify(message, signature) == message
    with pytest.raises(nacl.exceptions.BadSignatureError):
        verify_key.verify(message + b"\x00", signature)


@pytest.mark.parametrize("vector", _rfc8032(), ids=lambda v: v["id"])
def test_rfc8032(vector: dict[str, Any]) -> None:
    _sign_and_check(
        bytes.fromhex(vector["secret_key"]),
        bytes.fromhex(vector["public_key"]),
        bytes.fromhex(vector["message"]),
        bytes.fromhex(vector["signature"]),
    )


def test_djb_file_has_every_line(djb_lines: list[str]) -> None:
    assert len(djb_lines) == DJB_LINES


@pytest.mark.parametrize("line_no", range(1, DJB_LINES + 1), ids=lambda n: f"line{n:04d}")
def test_djb_sign_input(djb_lines: list[str], line_no: int) -> None:
    # Format: sk||pk : pk : msg : sig||msg :
    fields = djb_lines[line_no - 1].split(":")
    assert len(fields) == 5 and fields[4] == ""
    keypair, public, message = (bytes.fromhex(f) for f in fields[:3])
    signed = bytes.fromhex(fields[3])
    assert keypair[32:] == public and signed[SIGNATURE_LENGTH:] == message
    _sign_and_check(keypair[:32], public, message, signed[:SIGNATURE_LENGTH])


def test_wycheproof_count(shared_dir: Path) -> None:
    data = json.loads(
        (shared_dir / "vectors" / "ed25519" / "wycheproof_ed25519_test.json").read_text()
    )
    results = [t["result"] for g in data["testGroups"] for t in g["tests"]]
    assert (len(results), results.count("valid"), results.count("invalid")) == (151, 88, 63)


@pytest.mark.parametrize(("public_hex", "test"), _wycheproof_cases())
def test_wycheproof(public_hex: str, test: dict[str, Any]) -> None:
    verify_key = nacl.signing.VerifyKey(bytes.fromhex(public_hex))
    message, signature = bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"])
    if test["result"] == "valid":
        assert verify_key.verify(message, signature) == message
        # The did:key route (what integrity.py resolves) must give the same verdict.
        resolved = resolve(did_from_ed25519(bytes.fromhex(public_hex))).ed25519
        assert resolved is not None and resolved.verify(message, signature) == message
        return
    assert test["result"] == "invalid"
    if len(signature) != SIGNATURE_LENGTH:
        # SignatureWithGarbage / TruncatedSignature / CompressedSignature: wrong length is
        # refused before any arithmetic.
        with pytest.raises(ValueError, match="64 bytes"):
            verify_key.verify(message, signature)
    else:
        # InvalidEncoding, InvalidSignature, SignatureMalleability (S >= L), InvalidKtv.
        with pytest.raises(nacl.exceptions.BadSignatureError):
            verify_key.verify(message, signature)
