"""did:key (W3C CCG did:key method v0.7) against the method's own test vectors, read in place.

- ``did_key/ed25519-x25519.json``: from each seed, ``Identity`` reproduces the DID, the Ed25519
  key and the derived X25519 key pair (public and private, RFC 7748 birational map), and
  ``resolve`` gives the same keys back.
- ``did_key/x25519.json``: ``resolve`` of each X25519-only (``z6LS``) DID gives its key.
- ``did_key/spec_example_did_document.json``: ``did_document`` equals the spec's example.
- Malformed DIDs are refused with ``DIDError``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import base58
import pytest

from consent.did import (
    did_document,
    multibase_encode,
    resolve,
    verification_method_key,
)
from consent.errors import DIDError
from consent.identity import Identity

# Parametrisation runs at collection, before fixtures exist, so the ids are read from the same
# read-in-place folder the shared_dir fixture points at.
VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "did_key"
SPEC_DID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"


def _load(shared_dir: Path, name: str) -> Any:
    return json.loads((shared_dir / "vectors" / "did_key" / name).read_text(encoding="utf-8"))


def _ids(name: str) -> list[str]:
    data = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return list(data.get("didDocument", data))


def _b64url(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _public_key(pair: dict[str, Any]) -> bytes:
    """The raw key of a 2018/2019 (publicKeyBase58) or JsonWebKey2020 verification method."""
    if "publicKeyBase58" in pair:
        return base58.b58decode(pair["publicKeyBase58"])
    return _b64url(pair["publicKeyJwk"]["x"])


def _private_key(pair: dict[str, Any]) -> bytes:
    if "privateKeyBase58" in pair:
        return base58.b58decode(pair["privateKeyBase58"])
    return _b64url(pair["privateKeyJwk"]["d"])


@pytest.fixture(scope="module")
def ed_vectors(shared_dir: Path) -> dict[str, Any]:
    return _load(shared_dir, "ed25519-x25519.json")


@pytest.fixture(scope="module")
def x_vectors(shared_dir: Path) -> dict[str, Any]:
    return _load(shared_dir, "x25519.json")["didDocument"]


def test_vector_files_are_complete(ed_vectors: dict, x_vectors: dict) -> None:
    # SOURCES.md promises 5 Ed25519 and 4 X25519 did:keys; fewer would make the rest vacuous.
    assert len(ed_vectors) == 5
    assert len(x_vectors) == 4


@pytest.mark.parametrize("did", _ids("ed25519-x25519.json"))
def test_seed_reproduces_did_and_keys(ed_vectors: dict, did: str) -> None:
    vector = ed_vectors[did]
    identity = Identity.from_seed(bytes.fromhex(vector["seed"]))
    x_pair = vector["keyAgreementKeyPair"]

    assert identity.did == did
    assert bytes(identity.signing_key.verify_key) == _public_key(vector["verificationKeyPair"])
    assert bytes(identity.box_key.public_key) == _public_key(x_pair)
    assert bytes(identity.box_key) == _private_key(x_pair)
    assert identity.verification_method == vector["didDocument"]["assertionMethod"][0]


@pytest.mark.parametrize("did", _ids("ed25519-x25519.json"))
def test_resolve_ed25519_did(ed_vectors: dict, did: str) -> None:
    vector = ed_vectors[did]
    resolved = resolve(did)

    assert resolved.did == did
    assert resolved.ed25519 is not None
    assert bytes(resolved.ed25519) == _public_key(vector["verificationKeyPair"])
    assert bytes(resolved.x25519) == _public_key(vector["keyAgreementKeyPair"])
    assert resolved.verification_method == vector["didDocument"]["authentication"][0]


@pytest.mark.parametrize("did", _ids("ed25519-x25519.json"))
def test_did_document_key_agreement_matches_vector(ed_vectors: dict, did: str) -> None:
    # The vectors use the 2018/2019 suites, our documents the 2020 Multikey form: the ids and
    # the key bytes must still agree.
    vector = ed_vectors[did]
    document = did_document(did)
    agreement = document["keyAgreement"][0]

    assert agreement["id"] == vector["didDocument"]["keyAgreement"][0]
    assert agreement["publicKeyMultibase"] == multibase_encode(
        b"\xec\x01", _public_key(vector["keyAgreementKeyPair"])
    )
    assert document["assertionMethod"] == vector["didDocument"]["assertionMethod"]
    assert document["capabilityInvocation"] == vector["didDocument"]["capabilityInvocation"]


@pytest.mark.parametrize("did", _ids("x25519.json"))
def test_resolve_x25519_did(x_vectors: dict, did: str) -> None:
    expected = x_vectors[did]
    resolved = resolve(did)

    assert resolved.ed25519 is None
    assert bytes(resolved.x25519) == _public_key(expected["verificationMethod"][0])
    assert resolved.verification_method == expected["keyAgreement"][0]
    assert did_document(did)["keyAgreement"][0]["id"] == expected["keyAgreement"][0]


def test_did_document_equals_spec_example(shared_dir: Path) -> None:
    expected = _load(shared_dir, "spec_example_did_document.json")
    assert expected["id"] == SPEC_DID
    assert did_document(SPEC_DID) == expected


def test_verification_method_with_matching_fragment() -> None:
    assert verification_method_key(f"{SPEC_DID}#{SPEC_DID[8:]}").did == SPEC_DID
    assert verification_method_key(SPEC_DID).did == SPEC_DID


def test_verification_method_with_foreign_fragment() -> None:
    other = Identity.from_seed(bytes(32)).did
    with pytest.raises(DIDError, match="fragment"):
        verification_method_key(f"{SPEC_DID}#{other[8:]}")


def _did(codec: bytes, key: bytes) -> str:
    return "did:key:" + multibase_encode(codec, key)


MALFORMED: dict[str, object] = {
    "empty": "",
    "prefix-only": "did:key:",
    "not-a-string": None,
    "did-web": "did:web:example.com",
    "upper-case-method": "DID:KEY:" + SPEC_DID[8:],
    "missing-method": "did:" + SPEC_DID[8:],
    "not-multibase-z": "did:key:u" + SPEC_DID[9:],
    "not-base58-zero": "did:key:z6Mk0OIl" + SPEC_DID[16:],
    "not-base58-symbol": SPEC_DID[:-1] + "+",
    "fragment": f"{SPEC_DID}#{SPEC_DID[8:]}",
    "path": f"{SPEC_DID}/path",
    "two-keys": f"{SPEC_DID}:{SPEC_DID[8:]}",
    "leading-space": " " + SPEC_DID,
    "secp256k1-multicodec": _did(b"\xe7\x01", b"\x02" + bytes(32)),
    "ed25519-priv-multicodec": _did(b"\x80\x26", bytes(32)),
    "no-multicodec": "did:key:z" + base58.b58encode(bytes(range(34))).decode(),
    "ed25519-31-bytes": _did(b"\xed\x01", bytes(range(1, 32))),
    "ed25519-33-bytes": _did(b"\xed\x01", bytes(range(1, 34))),
    "x25519-31-bytes": _did(b"\xec\x01", bytes(range(1, 32))),
    "codec-only": _did(b"\xed\x01", b""),
    "ed25519-not-on-curve": _did(b"\xed\x01", bytes([2]) + bytes(31)),
}


@pytest.mark.parametrize("did", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_did_rejected(did: object) -> None:
    with pytest.raises(DIDError) as info:
        resolve(did)  # type: ignore[arg-type]
    assert str(info.value)  # every rejection says what was wrong


@pytest.mark.parametrize("suffix", [" ", "\n", "\t"], ids=["space", "newline", "tab"])
def test_trailing_whitespace_rejected(suffix: str) -> None:
    # A DID with trailing whitespace is a different string from the canonical one, yet the
    # base58 library strips it while decoding: it must not resolve (or two spellings of one
    # identity would exist).
    with pytest.raises(DIDError):
        resolve(SPEC_DID + suffix)


def test_did_error_does_not_echo_key_material() -> None:
    with pytest.raises(DIDError) as info:
        resolve(_did(b"\xed\x01", bytes(range(1, 32))))
    assert "31" in str(info.value)
    assert bytes(range(1, 32)).hex() not in str(info.value)
