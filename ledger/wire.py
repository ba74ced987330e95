"""Conversions between the ledger's data model and its protobuf messages (sovereign.v1)."""

from __future__ import annotations

from ledger.models import Anchor, AnchorLink, ConsistencyProof, LogPublicKey, Receipt
from protos.sovereign.v1 import ledger_pb2 as pb

WIRE_VERSION = 1


def anchor_to_pb(anchor: Anchor, proof: tuple[bytes, ...] = ()) -> pb.Anchor:
    return pb.Anchor(
        chain_id=anchor.chain_id,
        tx_hash=anchor.tx_hash,
        block_number=anchor.block_number,
        size=anchor.size,
        root=anchor.root,
        checkpoint=anchor.checkpoint,
        consistency_proof=list(proof),
    )


def anchor_from_pb(msg: pb.Anchor) -> AnchorLink:
    anchor = Anchor(
        msg.chain_id, msg.tx_hash, msg.block_number, msg.size, bytes(msg.root), msg.checkpoint
    )
    return AnchorLink(anchor, tuple(bytes(p) for p in msg.consistency_proof))


def receipt_to_pb(receipt: Receipt) -> pb.Receipt:
    return pb.Receipt(
        version=WIRE_VERSION,
        origin=receipt.origin,
        hash_algorithm=receipt.hash_algorithm,
        index=receipt.index,
        entry=receipt.entry,
        checkpoint=receipt.checkpoint,
        inclusion_proof=list(receipt.inclusion_proof),
        anchors=[anchor_to_pb(link.anchor, link.proof) for link in receipt.anchors],
    )


def receipt_from_pb(msg: pb.Receipt) -> Receipt:
    return Receipt(
        origin=msg.origin,
        hash_algorithm=msg.hash_algorithm,
        index=msg.index,
        entry=bytes(msg.entry),
        checkpoint=msg.checkpoint,
        inclusion_proof=tuple(bytes(p) for p in msg.inclusion_proof),
        anchors=tuple(anchor_from_pb(a) for a in msg.anchors),
    )


def consistency_to_pb(proof: ConsistencyProof) -> pb.ConsistencyProof:
    return pb.ConsistencyProof(
        version=WIRE_VERSION,
        origin=proof.origin,
        hash_algorithm=proof.hash_algorithm,
        old_checkpoint=proof.old_checkpoint,
        new_checkpoint=proof.new_checkpoint,
        proof=list(proof.proof),
    )


def consistency_from_pb(msg: pb.ConsistencyProof) -> ConsistencyProof:
    return ConsistencyProof(
        msg.origin, msg.hash_algorithm, msg.old_checkpoint, msg.new_checkpoint,
        tuple(bytes(p) for p in msg.proof),
    )


def log_key_to_pb(key: LogPublicKey) -> pb.LogKey:
    return pb.LogKey(
        version=WIRE_VERSION,
        origin=key.origin,
        hash_algorithm=key.hash_algorithm,
        verifier_keys=list(key.verifier_keys),
    )


def log_key_from_pb(msg: pb.LogKey) -> LogPublicKey:
    return LogPublicKey.from_json(
        {
            "format": "sovereign-fabric-log-key",
            "version": 1,
            "origin": msg.origin,
            "hash": msg.hash_algorithm,
            "verifier_keys": list(msg.verifier_keys),
        }
    )
