"""Data model of the ledger: the log's public key, receipts, consistency proofs and anchors.

Plain frozen dataclasses with JSON (de)serialisation and no verification logic (that lives
in ``ledger.verify``), in the manner of python-tuf's metadata classes. Hashes travel as
base64 (as in C2SP checkpoints) and entries as the event's JSON object, whose RFC 8785
canonical form is the exact logged bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consent.canonical import canonicalize
from ledger.errors import LogKeyError, ReceiptError
from ledger.merkle import HASH_ALGORITHMS, hasher_for
from ledger.note import NoteVerifier, parse_vkey

RECEIPT_FORMAT = "sovereign-fabric-receipt"
LOG_KEY_FORMAT = "sovereign-fabric-log-key"
CONSISTENCY_FORMAT = "sovereign-fabric-consistency"
VERSION = 1


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: Any, what: str, error: type[Exception] = ReceiptError) -> bytes:
    if not isinstance(text, str):
        raise error(f"the {what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise error(f"the {what} is not valid base64") from exc


def _require(doc: Mapping[str, Any], name: str, kind: type, error: type[Exception]) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise error(f"the field '{name}' is missing or has the wrong type")
    return value


@dataclass(frozen=True)
class LogPublicKey:
    """What an auditor needs to trust a log: its origin, hash function and verifier keys."""

    origin: str
    hash_algorithm: str
    verifier_keys: tuple[str, ...]

    def verifiers(self) -> list[NoteVerifier]:
        return [parse_vkey(v) for v in self.verifier_keys]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": LOG_KEY_FORMAT,
            "version": VERSION,
            "origin": self.origin,
            "hash": self.hash_algorithm,
            "verifier_keys": list(self.verifier_keys),
        }

    @classmethod
    def from_json(cls, doc: Any) -> LogPublicKey:
        if not isinstance(doc, dict) or doc.get("format") != LOG_KEY_FORMAT:
            raise LogKeyError("not a log public-key file (format is not sovereign-fabric-log-key)")
        if doc.get("version") != VERSION:
            raise LogKeyError(f"unsupported log key version: this tool reads version {VERSION}")
        algorithm = _require(doc, "hash", str, LogKeyError)
        if algorithm not in HASH_ALGORITHMS:
            raise LogKeyError(f"the log key names an unknown hash {algorithm!r}")
        keys = _require(doc, "verifier_keys", list, LogKeyError)
        if not keys or not all(isinstance(k, str) for k in keys):
            raise LogKeyError("the log key file lists no verifier keys")
        key = cls(_require(doc, "origin", str, LogKeyError), algorithm, tuple(keys))
        key.verifiers()  # parse now so a bad key fails here, not mid-verification
        return key

    @classmethod
    def load(cls, path: Path) -> LogPublicKey:
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except OSError as exc:
            raise LogKeyError(f"cannot read the log key file {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise LogKeyError(f"the log key file {path} is not JSON") from exc


@dataclass(frozen=True)
class Anchor:
    """A tree head written to an Ethereum-compatible chain by a zero-value transaction."""

    chain_id: int
    tx_hash: str
    block_number: int
    size: int
    root: bytes
    checkpoint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "tx_hash": self.tx_hash,
            "block_number": self.block_number,
            "size": self.size,
            "root": b64(self.root),
            "checkpoint": self.checkpoint,
        }

    @classmethod
    def from_json(cls, doc: Any) -> Anchor:
        if not isinstance(doc, dict):
            raise ReceiptError("an anchor must be a JSON object")
        return cls(
            chain_id=_require(doc, "chain_id", int, ReceiptError),
            tx_hash=_require(doc, "tx_hash", str, ReceiptError),
            block_number=_require(doc, "block_number", int, ReceiptError),
            size=_require(doc, "size", int, ReceiptError),
            root=unb64(doc.get("root"), "anchor root"),
            checkpoint=_require(doc, "checkpoint", str, ReceiptError),
        )


@dataclass(frozen=True)
class AnchorLink:
    """An anchor plus the consistency proof linking its tree to a receipt's tree."""

    anchor: Anchor
    proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {**self.anchor.to_json(), "consistency_proof": [b64(p) for p in self.proof]}

    @classmethod
    def from_json(cls, doc: Any) -> AnchorLink:
        proof = doc.get("consistency_proof") if isinstance(doc, dict) else None
        if not isinstance(proof, list):
            raise ReceiptError("an anchor in the receipt has no consistency_proof list")
        return cls(Anchor.from_json(doc), tuple(unb64(p, "anchor proof hash") for p in proof))


@dataclass(frozen=True)
class Receipt:
    """Proof that an entry is in the log: entry, index, signed tree head, inclusion proof."""

    origin: str
    hash_algorithm: str
    index: int
    entry: bytes
    checkpoint: str
    inclusion_proof: tuple[bytes, ...]
    anchors: tuple[AnchorLink, ...] = field(default=())

    @property
    def entry_hash(self) -> str:
        """Hex RFC 9162 leaf hash of the entry: the key to ask the ledger for this entry."""
        return hasher_for(self.hash_algorithm).leaf(self.entry).hex()

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.entry)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECEIPT_FORMAT,
            "version": VERSION,
            "origin": self.origin,
            "hash": self.hash_algorithm,
            "index": self.index,
            "entry": json.loads(self.entry),
            "entry_hash": self.entry_hash,
            "checkpoint": self.checkpoint,
            "inclusion_proof": [b64(p) for p in self.inclusion_proof],
            "anchors": [a.to_json() for a in self.anchors],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, doc: Any) -> Receipt:
        if not isinstance(doc, dict) or doc.get("format") != RECEIPT_FORMAT:
            raise ReceiptError("not a receipt (format is not sovereign-fabric-receipt)")
        if doc.get("version") != VERSION:
            raise ReceiptError(f"unsupported receipt version: this tool reads version {VERSION}")
        algorithm = _require(doc, "hash", str, ReceiptError)
        if algorithm not in HASH_ALGORITHMS:
            raise ReceiptError(f"the receipt names an unknown hash {algorithm!r}")
        if not isinstance(doc.get("entry"), dict):
            raise ReceiptError("the receipt's entry must be a JSON object")
        proof = _require(doc, "inclusion_proof", list, ReceiptError)
        anchors = doc.get("anchors", [])
        if not isinstance(anchors, list):
            raise ReceiptError("the receipt's anchors must be a list")
        try:
            entry = canonicalize(doc["entry"])
        except ValueError as exc:  # NaN, infinities, numbers beyond IEEE doubles
            raise ReceiptError(f"the receipt's entry is not canonical JSON: {exc}") from exc
        receipt = cls(
            origin=_require(doc, "origin", str, ReceiptError),
            hash_algorithm=algorithm,
            index=_require(doc, "index", int, ReceiptError),
            entry=entry,
            checkpoint=_require(doc, "checkpoint", str, ReceiptError),
            inclusion_proof=tuple(unb64(p, "inclusion proof hash") for p in proof),
            anchors=tuple(AnchorLink.from_json(a) for a in anchors),
        )
        claimed = doc.get("entry_hash")
        if claimed is not None and claimed != receipt.entry_hash:
            raise ReceiptError(
                "entry check failed: the entry does not hash to the receipt's entry_hash "
                "(the entry or the hash was altered)"
            )
        return receipt

    @classmethod
    def loads(cls, text: str | bytes) -> Receipt:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ReceiptError("the receipt is not JSON") from exc
        return cls.from_json(doc)


@dataclass(frozen=True)
class ConsistencyProof:
    """Two signed tree heads of one log and the RFC 9162 proof that the first is a prefix."""

    origin: str
    hash_algorithm: str
    old_checkpoint: str
    new_checkpoint: str
    proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CONSISTENCY_FORMAT,
            "version": VERSION,
            "origin": self.origin,
            "hash": self.hash_algorithm,
            "old_checkpoint": self.old_checkpoint,
            "new_checkpoint": self.new_checkpoint,
            "proof": [b64(p) for p in self.proof],
        }

    @classmethod
    def from_json(cls, doc: Any) -> ConsistencyProof:
        if not isinstance(doc, dict) or doc.get("format") != CONSISTENCY_FORMAT:
            raise ReceiptError(
                "not a consistency proof (format is not sovereign-fabric-consistency)"
            )
        proof = _require(doc, "proof", list, ReceiptError)
        return cls(
            origin=_require(doc, "origin", str, ReceiptError),
            hash_algorithm=_require(doc, "hash", str, ReceiptError),
            old_checkpoint=_require(doc, "old_checkpoint", str, ReceiptError),
            new_checkpoint=_require(doc, "new_checkpoint", str, ReceiptError),
            proof=tuple(unb64(p, "consistency proof hash") for p in proof),
        )
