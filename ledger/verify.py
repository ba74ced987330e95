"""Offline verification of receipts, tree heads, consistency proofs and anchor links.

Each check is named (``CHECKS``) so that a failed verification can say which check failed
and why. Order matters: the tree head's signature is verified before anything in it is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.errors import CheckpointError, ConsistencyProofError, LedgerError, ReceiptError
from ledger.events import validate_event
from ledger.merkle import hasher_for, verify_consistency, verify_inclusion
from ledger.models import AnchorLink, ConsistencyProof, LogPublicKey, Receipt
from ledger.note import Checkpoint, open_note


class CheckFailed(LedgerError):
    """A named verification check failed; ``check`` says which one."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"{check} check failed: {reason}")
        self.check = check
        self.reason = reason


def verify_tree_head(note: str, log_key: LogPublicKey) -> Checkpoint:
    """Verify a signed checkpoint by the log's key(s); return the checkpoint."""
    try:
        checkpoint = Checkpoint.parse(open_note(note, log_key.verifiers()))
    except CheckpointError as exc:
        raise CheckFailed("tree-head signature", str(exc)) from exc
    if checkpoint.origin != log_key.origin:
        raise CheckFailed(
            "tree-head signature",
            f"the tree head is for the log {checkpoint.origin!r}, not {log_key.origin!r}",
        )
    if len(checkpoint.root) != hasher_for(log_key.hash_algorithm).size:
        raise CheckFailed("tree-head signature", "the tree head's root has the wrong length")
    return checkpoint


def _check_log(origin: str, algorithm: str, log_key: LogPublicKey) -> None:
    if origin != log_key.origin or algorithm != log_key.hash_algorithm:
        raise CheckFailed("log identity", "this item belongs to a different log than the key given")


@dataclass(frozen=True)
class ReceiptResult:
    checkpoint: Checkpoint
    anchored_sizes: tuple[int, ...]


def verify_receipt(receipt: Receipt, log_key: LogPublicKey) -> ReceiptResult:
    """Check log identity, entry schema, tree-head signature, inclusion and anchor links."""
    _check_log(receipt.origin, receipt.hash_algorithm, log_key)
    try:
        validate_event(receipt.event)
    except LedgerError as exc:
        raise CheckFailed("entry", str(exc)) from exc
    checkpoint = verify_tree_head(receipt.checkpoint, log_key)
    hasher = hasher_for(log_key.hash_algorithm)
    try:
        verify_inclusion(
            hasher,
            receipt.index,
            checkpoint.size,
            hasher.leaf(receipt.entry),
            receipt.inclusion_proof,
            checkpoint.root,
        )
    except LedgerError as exc:
        raise CheckFailed("inclusion", str(exc)) from exc
    sizes = tuple(
        verify_anchor_link(link, checkpoint, receipt.index, log_key).size
        for link in receipt.anchors
    )
    return ReceiptResult(checkpoint, sizes)


def verify_anchor_link(
    link: AnchorLink, checkpoint: Checkpoint, index: int, log_key: LogPublicKey
) -> Checkpoint:
    """Offline half of anchor checking: the anchored tree head is signed, covers ``index``
    and is consistent with ``checkpoint``. Whether the chain holds it is ``ledger.anchor``'s job.
    """
    anchored = verify_tree_head(link.anchor.checkpoint, log_key)
    if anchored.size != link.anchor.size or anchored.root != link.anchor.root:
        raise CheckFailed("anchor", "the anchor's size or root differs from its signed tree head")
    if anchored.size <= index:
        raise CheckFailed(
            "anchor", f"the anchored tree (size {anchored.size}) ends before entry {index}"
        )
    old, new = sorted((anchored, checkpoint), key=lambda c: c.size)
    try:
        verify_consistency(
            hasher_for(log_key.hash_algorithm), old.size, new.size, link.proof, old.root, new.root
        )
    except ConsistencyProofError as exc:
        raise CheckFailed("anchor consistency", str(exc)) from exc
    return anchored


def verify_consistency_proof(
    proof: ConsistencyProof, log_key: LogPublicKey
) -> tuple[Checkpoint, Checkpoint]:
    """Verify both tree heads' signatures and that the old tree is a prefix of the new one."""
    _check_log(proof.origin, proof.hash_algorithm, log_key)
    old = verify_tree_head(proof.old_checkpoint, log_key)
    new = verify_tree_head(proof.new_checkpoint, log_key)
    try:
        verify_consistency(
            hasher_for(log_key.hash_algorithm), old.size, new.size, proof.proof, old.root, new.root
        )
    except ConsistencyProofError as exc:
        raise CheckFailed("consistency", str(exc)) from exc
    return old, new


def load_receipt(text: str | bytes) -> Receipt:
    """Parse a receipt, reporting a malformed one as a failed ``receipt format`` check."""
    try:
        return Receipt.loads(text)
    except ReceiptError as exc:
        raise CheckFailed("receipt format", str(exc)) from exc
