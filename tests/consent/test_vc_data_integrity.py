"""W3C VC Data Integrity EdDSA Cryptosuites v1.0, ``eddsa-jcs-2022``, against the W3C vectors.

Read in place from ``vc_di_eddsa/TestVectors`` (w3c/vc-di-eddsa):

- ``keyPair.json``: the Multikey secret key (multicodec ``ed25519-priv`` 0x8026 + 32-byte seed)
  gives an ``Identity`` whose public Multikey is the published one.
- ``eddsa-jcs-2022/``: ``sign_document(unsigned.json)`` equals ``signedJCS.json`` byte for byte,
  every intermediate (canonical proof config and document, their SHA-256, the combined hash, the
  signature in hex and base58btc) is reproduced with ``consent.canonical`` and ``hashlib``, and
  ``verify_document`` returns the key's DID; any single change makes it fail.
- ``eddsa-rdfc-2022/`` (both documents) and ``Ed25519Signature2020/`` are other cryptosuites:
  they must be refused with ``UnsupportedCryptosuite``. Their signatures cannot be reproduced
  here because they are computed over RDF Dataset Canonicalization (RDFC-1.0) N-Quads, which
  this project does not implement (JCS only).
- ``proof-set-chain/``: every proof in these examples uses ``eddsa-rdfc-2022``, so none of their
  signatures can be checked by an ``eddsa-jcs-2022`` verifier. What does apply: the four
  ``multiKeyPairs.json`` keys decode to the published public keys, and every signed proof set
  or chain is refused (``UnsupportedCryptosuite``, or ``SignatureError`` for proof lists of a
  shape this project never accepts), never silently verified. Our own eddsa-jcs-2022 proofs by
  those keys over the same credential verify and name the right DID.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import base58
import pytest

from consent.canonical import canonicalize
from consent.errors import SignatureError, UnsupportedCryptosuite
from consent.identity import Identity
from consent.integrity import sign_document, verify_document

ED25519_PRIV = b"\x80\x26"
CREATED = datetime(2023, 2, 24, 23, 36, 38, tzinfo=UTC)
VECTOR_DID = "did:key:z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2"
OTHER_VM = (
    "did:key:z6MktgKTsu1QhX6QPbyqG6geXdw6FQCZBPq7uQpieWbiQiG7"
    "#z6MktgKTsu1QhX6QPbyqG6geXdw6FQCZBPq7uQpieWbiQiG7"
)


def _identity_from_multikey(secret_multibase: str) -> Identity:
    raw = base58.b58decode(secret_multibase.removeprefix("z"))
    assert secret_multibase.startswith("z") and raw[:2] == ED25519_PRIV and len(raw) == 34
    return Identity.from_seed(raw[2:])


@pytest.fixture(scope="module")
def tv(shared_dir: Path) -> Path:
    return shared_dir / "vectors" / "vc_di_eddsa" / "TestVectors"


@pytest.fixture(scope="module")
def key_pair(tv: Path) -> dict[str, str]:
    return json.loads((tv / "keyPair.json").read_text())


@pytest.fixture(scope="module")
def identity(key_pair: dict[str, str]) -> Identity:
    return _identity_from_multikey(key_pair["privateKeyMultibase"])


@pytest.fixture(scope="module")
def unsigned(tv: Path) -> dict[str, Any]:
    return json.loads((tv / "unsigned.json").read_text())


@pytest.fixture(scope="module")
def signed(tv: Path) -> dict[str, Any]:
    return json.loads((tv / "eddsa-jcs-2022" / "signedJCS.json").read_text())


def _text(tv: Path, name: str) -> str:
    return (tv / "eddsa-jcs-2022" / name).read_text()


def test_key_pair_decodes(key_pair: dict[str, str], identity: Identity) -> None:
    assert identity.public_multikey == key_pair["publicKeyMultibase"]
    assert identity.did == VECTOR_DID


def test_sign_reproduces_signed_credential(
    tv: Path, unsigned: dict, identity: Identity, signed: dict
) -> None:
    ours = sign_document(unsigned, identity, created=CREATED)
    assert ours == signed
    # Same key order as well: the published file is exactly this serialisation.
    assert json.dumps(ours, indent=2) == _text(tv, "signedJCS.json")
    assert unsigned == json.loads((tv / "unsigned.json").read_text())  # input left untouched


def test_proof_config_matches(tv: Path, unsigned: dict, identity: Identity) -> None:
    proof = sign_document(unsigned, identity, created=CREATED)["proof"]
    config = {k: v for k, v in proof.items() if k != "proofValue"}
    assert config == json.loads(_text(tv, "proofConfigJCS.json"))


def test_intermediate_hashes(tv: Path, unsigned: dict, identity: Identity) -> None:
    config = json.loads(_text(tv, "proofConfigJCS.json"))
    proof_canon, doc_canon = canonicalize(config), canonicalize(unsigned)
    assert proof_canon.decode() == _text(tv, "proofCanonJCS.txt")
    assert doc_canon.decode() == _text(tv, "canonDocJCS.txt")

    proof_hash = hashlib.sha256(proof_canon).digest()
    doc_hash = hashlib.sha256(doc_canon).digest()
    assert proof_hash.hex() == _text(tv, "proofHashJCS.txt")
    assert doc_hash.hex() == _text(tv, "docHashJCS.txt")
    assert (proof_hash + doc_hash).hex() == _text(tv, "combinedHashJCS.txt")

    signature = identity.sign(proof_hash + doc_hash)
    assert signature.hex() == _text(tv, "sigHexJCS.txt")
    assert "z" + base58.b58encode(signature).decode() == _text(tv, "sigBTC58JCS.txt")


def test_verify_signed_vector(signed: dict) -> None:
    assert verify_document(signed) == VECTOR_DID


def _set(path: str, value: Any) -> Callable[[dict], None]:
    keys = path.split(".")

    def mutate(document: dict) -> None:
        target = document
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


def _delete(key: str) -> Callable[[dict], None]:
    return lambda document: document.pop(key)


def _both_contexts(document: dict) -> None:
    context = [*document["@context"], "https://w3id.org/security/data-integrity/v2"]
    document["@context"] = context
    document["proof"]["@context"] = list(context)


def _flip_proof_value(document: dict) -> None:
    signature = bytearray(base58.b58decode(document["proof"]["proofValue"][1:]))
    signature[10] ^= 0x01
    document["proof"]["proofValue"] = "z" + base58.b58encode(bytes(signature)).decode()


EXTRA_CONTEXT = [
    "https://www.w3.org/ns/credentials/v2",
    "https://www.w3.org/ns/credentials/examples/v2",
    "https://w3id.org/security/data-integrity/v2",
]
MUTATIONS: dict[str, Callable[[dict], None]] = {
    "subject-value": _set("credentialSubject.alumniOf", "The School of Forgeries"),
    "subject-id": _set("credentialSubject.id", "did:example:attacker"),
    "name": _set("name", "Alumni Credential "),
    "issuer": _set("issuer", "https://vc.example/issuers/5679"),
    "validFrom": _set("validFrom", "2023-01-01T00:00:01Z"),
    "type-order": _set("type", ["AlumniCredential", "VerifiableCredential"]),
    "field-removed": _delete("description"),
    "field-added": _set("validUntil", "2099-01-01T00:00:00Z"),
    "created": _set("proof.created", "2023-02-24T23:36:39Z"),
    "verificationMethod-other-key": _set("proof.verificationMethod", OTHER_VM),
    "verificationMethod-foreign-fragment": _set(
        "proof.verificationMethod", f"{VECTOR_DID}#{OTHER_VM.partition('#')[2]}"
    ),
    "verificationMethod-not-did": _set("proof.verificationMethod", "https://vc.example/key"),
    "proofPurpose": _set("proof.proofPurpose", "authentication"),
    "document-context": _set("@context", EXTRA_CONTEXT),
    "proof-context": _set("proof.@context", EXTRA_CONTEXT),
    "both-contexts": _both_contexts,
    "proof-context-removed": lambda d: d["proof"].pop("@context"),
    "proofValue-bit": _flip_proof_value,
    "proofValue-not-multibase": _set("proof.proofValue", "2HnFSSPPBzR36zdDgK8PbEHeXbR"),
    "proofValue-short": _set("proof.proofValue", "z" + base58.b58encode(bytes(63)).decode()),
    "proofValue-not-base58": _set("proof.proofValue", "z0OIl"),
    "proofValue-missing": lambda d: d["proof"].pop("proofValue"),
    "proof-missing": _delete("proof"),
    "proof-not-object": _set("proof", "z2HnFSSPPBzR36zdDgK8PbEHeXbR"),
    "created-missing": lambda d: d["proof"].pop("created"),
}


@pytest.mark.parametrize("mutate", list(MUTATIONS.values()), ids=list(MUTATIONS))
def test_any_change_fails(signed: dict, mutate: Callable[[dict], None]) -> None:
    document = copy.deepcopy(signed)
    mutate(document)
    assert document != signed
    with pytest.raises(SignatureError) as info:
        verify_document(document)
    assert str(info.value)


def test_wrong_cryptosuite_name_is_unsupported(signed: dict) -> None:
    document = copy.deepcopy(signed)
    document["proof"]["cryptosuite"] = "eddsa-rdfc-2022"
    with pytest.raises(UnsupportedCryptosuite, match="eddsa-rdfc-2022"):
        verify_document(document)


def test_wrong_proof_type_is_unsupported(signed: dict) -> None:
    document = copy.deepcopy(signed)
    document["proof"]["type"] = "Ed25519Signature2020"
    with pytest.raises(UnsupportedCryptosuite, match="DataIntegrityProof"):
        verify_document(document)


@pytest.mark.parametrize(
    "name",
    [
        "eddsa-rdfc-2022/signedDataInt.json",
        "eddsa-rdfc-2022/employ/signedDataInt.json",
        "Ed25519Signature2020/signedEdSig.json",
    ],
)
def test_other_cryptosuite_vectors_refused(tv: Path, name: str) -> None:
    document = json.loads((tv / name).read_text())
    with pytest.raises(UnsupportedCryptosuite):
        verify_document(document)


@pytest.fixture(scope="module")
def multi_keys(tv: Path) -> dict[str, dict[str, str]]:
    return json.loads((tv / "proof-set-chain" / "multiKeyPairs.json").read_text())


@pytest.mark.parametrize("name", ["keyPair1", "keyPair2", "keyPair3", "keyPair4"])
def test_multi_key_pairs_decode(multi_keys: dict, name: str) -> None:
    pair = multi_keys[name]
    assert _identity_from_multikey(pair["privateKeyMultibase"]).public_multikey == (
        pair["publicKeyMultibase"]
    )


@pytest.mark.parametrize("name", ["keyPair1", "keyPair2", "keyPair3", "keyPair4"])
def test_multi_key_pairs_sign_jcs(tv: Path, multi_keys: dict, name: str) -> None:
    signer = _identity_from_multikey(multi_keys[name]["privateKeyMultibase"])
    unsigned = json.loads((tv / "proof-set-chain" / "unsigned.json").read_text())
    document = sign_document(unsigned, signer, created=CREATED)
    assert document["proof"]["verificationMethod"].partition("#")[2] == (
        multi_keys[name]["publicKeyMultibase"]
    )
    assert verify_document(document) == signer.did


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("signedProofSet1.json", UnsupportedCryptosuite),
        ("signedProofSet2.json", UnsupportedCryptosuite),
        ("proofChainTempDoc1.json", UnsupportedCryptosuite),
        ("proofChainTempDoc2.json", SignatureError),
        ("signedProofChain1.json", SignatureError),
        ("signedProofChain2.json", SignatureError),
    ],
)
def test_rdfc_proof_sets_and_chains_refused(tv: Path, name: str, error: type) -> None:
    document = json.loads((tv / "proof-set-chain" / name).read_text())
    proofs = document["proof"] if isinstance(document["proof"], list) else [document["proof"]]
    assert {p["cryptosuite"] for p in proofs} == {"eddsa-rdfc-2022"}
    with pytest.raises(error):
        verify_document(document)
