"""RFC 9162 Merkle hashing and proofs against the shared vectors, read in place.

- ``merkle/rfc6962_reference_tree.json``: the RFC's 8-leaf reference tree.
- ``merkle/transparency-dev_testdata``: every transparency-dev probe, accepted or rejected as
  its ``wantErr`` says.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ledger.errors import ProofError
from ledger.merkle import (
    SHA256,
    MemoryTree,
    consistency_proof,
    hasher_for,
    inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

# Parametrisation happens at collection time, before fixtures exist, so the probe folder is
# located the same way the shared_dir fixture does it (read in place, never copied).
TD = Path(__file__).resolve().parents[3] / "shared/vectors/merkle/transparency-dev_testdata"


def _probe_files(kind: str) -> list[Path]:
    return sorted((TD / kind).rglob("*.json"))


@pytest.fixture(scope="module")
def reference(shared_dir: Path) -> dict:
    return json.loads((shared_dir / "vectors/merkle/rfc6962_reference_tree.json").read_text())


@pytest.fixture(scope="module")
def reference_tree(reference: dict) -> MemoryTree:
    tree = MemoryTree()
    tree.append_leaf_hashes([SHA256.leaf(bytes.fromhex(x)) for x in reference["leaf_inputs_hex"]])
    return tree


def test_probe_directories_are_complete() -> None:
    # SOURCES.md promises 98 inclusion and 98 consistency probes; a silent shortfall would
    # make the parametrised tests below vacuous.
    assert len(_probe_files("inclusion")) == 98
    assert len(_probe_files("consistency")) == 98


def test_reference_leaf_and_node_hashes(reference: dict, reference_tree: MemoryTree) -> None:
    leaves = [SHA256.leaf(bytes.fromhex(x)).hex() for x in reference["leaf_inputs_hex"]]
    assert leaves == reference["leaf_hashes"]
    for level, hashes in enumerate(reference["node_hashes_by_level"]["levels"]):
        got = [reference_tree.complete(level, i).hex() for i in range(len(hashes))]
        assert got == hashes


def test_reference_roots(reference: dict, reference_tree: MemoryTree) -> None:
    for item in reference["root_hashes"]:
        assert reference_tree.root(item["tree_size"]).hex() == item["root"]


def test_reference_inclusion_proofs(reference: dict, reference_tree: MemoryTree) -> None:
    assert reference["inclusion_proofs"]
    for item in reference["inclusion_proofs"]:
        proof = inclusion_proof(reference_tree, item["leaf_index"], item["tree_size"])
        assert [p.hex() for p in proof] == item["audit_path"]
        verify_inclusion(
            SHA256,
            item["leaf_index"],
            item["tree_size"],
            bytes.fromhex(item["leaf_hash"]),
            proof,
            bytes.fromhex(item["root"]),
        )


def test_reference_consistency_proofs(reference: dict, reference_tree: MemoryTree) -> None:
    assert reference["consistency_proofs"]
    for item in reference["consistency_proofs"]:
        old, new = item["first_size"], item["second_size"]
        proof = consistency_proof(reference_tree, old, new)
        assert [p.hex() for p in proof] == item["proof"]
        verify_consistency(
            SHA256,
            old,
            new,
            proof,
            bytes.fromhex(item["first_root"]),
            bytes.fromhex(item["second_root"]),
        )


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


@pytest.mark.parametrize("path", _probe_files("inclusion"), ids=lambda p: str(p.relative_to(TD)))
def test_transparency_dev_inclusion_probe(path: Path) -> None:
    probe = json.loads(path.read_text())
    args = (
        SHA256,
        probe["leafIdx"],
        probe["treeSize"],
        _b64(probe["leafHash"]),
        [_b64(p) for p in probe["proof"] or []],
        _b64(probe["root"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", _probe_files("consistency"), ids=lambda p: str(p.relative_to(TD)))
def test_transparency_dev_consistency_probe(path: Path) -> None:
    probe = json.loads(path.read_text())
    args = (
        SHA256,
        probe["size1"],
        probe["size2"],
        [_b64(p) for p in probe["proof"] or []],
        _b64(probe["root1"]),
        _b64(probe["root2"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_generated_proofs_verify_for_every_size_and_index() -> None:
    # Proof generation and verification agree on every (index, size) and (old, new) up to 40,
    # which covers every shape of right edge the RFC's recursion can take.
    tree = MemoryTree()
    tree.append_leaf_hashes([SHA256.leaf(i.to_bytes(4, "big")) for i in range(40)])
    for size in range(1, 41):
        root = tree.root(size)
        for index in range(size):
            proof = inclusion_proof(tree, index, size)
            verify_inclusion(SHA256, index, size, tree.complete(0, index), proof, root)
        for old in range(1, size + 1):
            proof = consistency_proof(tree, old, size)
            verify_consistency(SHA256, old, size, proof, tree.root(old), root)


def test_sm3_log_uses_sm3_with_rfc_prefixes() -> None:
    sm3 = hasher_for("sm3")
    # GB/T 32905-2016 Annex A.1: SM3("abc").
    assert sm3.digest(b"abc").hex() == (
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    )
    assert sm3.leaf(b"abc") == sm3.digest(b"\x00abc")
    tree = MemoryTree(sm3)
    tree.append_leaf_hashes([sm3.leaf(bytes([i])) for i in range(5)])
    proof = inclusion_proof(tree, 3, 5)
    verify_inclusion(sm3, 3, 5, tree.complete(0, 3), proof, tree.root())
    with pytest.raises(ProofError):
        verify_inclusion(SHA256, 3, 5, tree.complete(0, 3), proof, tree.root())


def test_truncate_restores_the_exact_earlier_tree() -> None:
    # The log undoes an append whose commit failed with truncate(); the tree must then grow
    # again exactly as if the failed batch never happened.
    leaves = [SHA256.leaf(i.to_bytes(4, "big")) for i in range(50)]
    for cut in (0, 1, 13, 32, 49):
        tree = MemoryTree()
        tree.append_leaf_hashes(leaves)
        tree.truncate(cut)
        tree.append_leaf_hashes([SHA256.leaf(b"x"), *leaves[cut + 1:]])
        fresh = MemoryTree()
        fresh.append_leaf_hashes([*leaves[:cut], SHA256.leaf(b"x"), *leaves[cut + 1:]])
        assert tree.root() == fresh.root()
        assert tree.inclusion_proof(cut, 50) == inclusion_proof(fresh, cut, 50)
