"""MemoryTree.load_leaf_hashes (the level-by-level build used when a log opens) gives exactly
the tree that appending leaf by leaf gives, for SHA-256 and SM3, and appends continue from it."""

from __future__ import annotations

import hashlib

import pytest

from ledger.merkle import MemoryTree, MerkleHasher, verify_inclusion


@pytest.mark.parametrize("algorithm", ["sha256", "sm3"])
def test_loaded_tree_equals_appended_tree(algorithm: str) -> None:
    hasher = MerkleHasher(algorithm)
    leaves = [hasher.leaf(i.to_bytes(4, "big")) for i in range(300)]
    for size in (0, 1, 2, 3, 7, 8, 9, 64, 127, 255, 256, 300):
        loaded, appended = MemoryTree(hasher), MemoryTree(hasher)
        level0 = loaded.levels[0]
        loaded.load_leaf_hashes([b"".join(leaves[: size // 2]), b"".join(leaves[size // 2 : size])])
        appended.append_leaf_hashes(leaves[:size])
        assert loaded.levels[0] is level0  # filled in place (the leaf index reads it)
        assert loaded.size == size and loaded.levels == appended.levels
        assert loaded.root() == appended.root()
        # Appending after a load continues the same tree (the right-edge frontier is right).
        loaded.append_leaf_hashes(leaves[size:])
        appended.append_leaf_hashes(leaves[size:])
        assert loaded.root() == appended.root() and loaded.levels == appended.levels
        proof = loaded.inclusion_proof(size // 2, 300)
        verify_inclusion(hasher, size // 2, 300, leaves[size // 2], proof, appended.root())


def test_load_refuses_a_non_empty_tree_and_ragged_input() -> None:
    tree = MemoryTree()
    tree.append_leaf_hashes([hashlib.sha256(b"x").digest()])
    with pytest.raises(ValueError, match="empty tree"):
        tree.load_leaf_hashes([b"\x00" * 32])
    with pytest.raises(ValueError, match="whole number"):
        MemoryTree().load_leaf_hashes([b"\x00" * 33])


def test_load_across_chunk_boundaries_with_an_odd_size() -> None:
    # More than 65,536 pairs on level 0, odd sizes on several levels: the chunked build.
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(140_001)]
    loaded, appended = MemoryTree(), MemoryTree()
    loaded.load_leaf_hashes([b"".join(leaves)])
    appended.append_leaf_hashes(leaves)
    assert loaded.levels == appended.levels and loaded.root() == appended.root()
