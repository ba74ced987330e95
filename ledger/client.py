"""Client of the gRPC ledger service, for nodes, the wallet and the coordinator.

Nothing the server says is taken on trust: every receipt is checked (tree-head signature by
the pinned log key, inclusion of the entry, and that the entry is the event we sent), every
tree head is signed, and each newer tree head must be consistent (RFC 9162 §2.1.4) with the
last one this client saw, so a server cannot fork the log's history under a client.

Pin the log key (``log_key=LogPublicKey.load("log-public.json")``). Without it the client
fetches the key from the server on first use and pins it for its lifetime (trust on first use).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from consent.canonical import canonicalize
from ledger.errors import LedgerError
from ledger.merkle import hasher_for
from ledger.models import Anchor, ConsistencyProof, LogPublicKey, Receipt
from ledger.note import Checkpoint
from ledger.verify import (
    CheckFailed,
    verify_anchor_link,
    verify_consistency_proof,
    verify_receipt,
    verify_tree_head,
)
from ledger.wire import (
    WIRE_VERSION,
    anchor_from_pb,
    consistency_from_pb,
    log_key_from_pb,
    receipt_from_pb,
)
from protos.sovereign.v1 import ledger_pb2 as pb
from protos.sovereign.v1 import ledger_pb2_grpc as pb_grpc
from protos.transport import secure_channel


class LedgerClientError(LedgerError):
    """The ledger service could not be reached or refused the request; ``code`` is the gRPC
    status name (e.g. ``PERMISSION_DENIED``)."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class LedgerClient:
    def __init__(
        self,
        address: str,
        ca_pem: bytes,
        *,
        log_key: LogPublicKey | None = None,
        timeout: float = 15.0,
    ) -> None:
        self._channel = secure_channel(address, ca_pem)
        self._stub = pb_grpc.LedgerServiceStub(self._channel)
        self._timeout = timeout
        self._log_key = log_key
        self._seen: Checkpoint | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            raise LedgerClientError(f"ledger {method} failed ({code}): {exc.details()}",
                                    code) from exc

    @property
    def log_key(self) -> LogPublicKey:
        if self._log_key is None:
            self._log_key = log_key_from_pb(
                self._call("GetLogKey", pb.GetLogKeyRequest(version=WIRE_VERSION))
            )
        return self._log_key

    def append(self, event: Mapping[str, Any]) -> Receipt:
        """Append one event; return its verified receipt."""
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[Mapping[str, Any]]) -> list[Receipt]:
        """Append a batch atomically; return one verified receipt per event.

        Each event must be signed already (``ledger.authority``). The ledger refuses a batch
        holding an entry it has (ALREADY_EXISTS, a replay); for a client retrying a batch
        whose answer it lost, that is no error: the receipts of the entries already in the
        log are fetched by hash and only the others are appended.
        """
        entries = [canonicalize(dict(e)) for e in events]
        try:
            response = self._call(
                "Append", pb.AppendRequest(version=WIRE_VERSION, events=entries)
            )
        except LedgerClientError as exc:
            if exc.code != "ALREADY_EXISTS":
                raise
            return self._append_missing(events, entries)
        receipts = [receipt_from_pb(r) for r in response.receipts]
        if len(receipts) != len(entries):
            raise CheckFailed("receipt", "the ledger returned a different number of receipts")
        for entry, receipt in zip(entries, receipts, strict=True):
            if receipt.entry != entry:
                raise CheckFailed("entry", "the ledger's receipt is for a different entry")
            self._verify(receipt)
        return receipts

    def _append_missing(
        self, events: Sequence[Mapping[str, Any]], entries: list[bytes]
    ) -> list[Receipt]:
        leaf = hasher_for(self.log_key.hash_algorithm).leaf
        found: dict[int, Receipt] = {}
        for i, entry in enumerate(entries):
            try:
                found[i] = self.receipt(leaf(entry).hex())
            except LedgerClientError as exc:
                if exc.code != "NOT_FOUND":
                    raise
        missing = [i for i in range(len(entries)) if i not in found]
        if len(set(entries)) != len(entries) or (missing and len(missing) == len(entries)):
            raise LedgerClientError("the ledger refused the batch as a replay, but holds none "
                                    "of its entries", "ALREADY_EXISTS")
        if missing:
            fresh = self.append_many([events[i] for i in missing])
            found.update(zip(missing, fresh, strict=True))
        return [found[i] for i in range(len(entries))]

    def receipt(self, entry_hash: str, *, with_anchors: bool = False) -> Receipt:
        """A verified receipt for the entry with this hex leaf hash, against the latest head."""
        try:
            raw = bytes.fromhex(entry_hash)
        except ValueError as exc:
            raise LedgerClientError("entry_hash must be hex") from exc
        response = self._call(
            "GetReceipt",
            pb.GetReceiptRequest(version=WIRE_VERSION, entry_hash=raw, with_anchors=with_anchors),
        )
        receipt = receipt_from_pb(response)
        if receipt.entry_hash != entry_hash.lower():
            raise CheckFailed("entry", "the ledger's receipt is for a different entry")
        self._verify(receipt)
        return receipt

    def consistency(self, old_size: int, new_size: int = 0) -> ConsistencyProof:
        """A verified proof that tree ``old_size`` is a prefix of ``new_size`` (0 = latest)."""
        proof = consistency_from_pb(
            self._call(
                "GetConsistencyProof",
                pb.GetConsistencyProofRequest(
                    version=WIRE_VERSION, old_size=old_size, new_size=new_size
                ),
            )
        )
        old, new = verify_consistency_proof(proof, self.log_key)
        if old.size != old_size or (new_size and new.size != new_size):
            raise CheckFailed("consistency", "the ledger answered for other tree sizes")
        return proof

    def latest_tree_head(self) -> Checkpoint:
        """The latest verified tree head, checked to extend every head seen before."""
        request = pb.GetLatestTreeHeadRequest(version=WIRE_VERSION)
        response = self._call("GetLatestTreeHead", request)
        checkpoint = verify_tree_head(response.checkpoint, self.log_key)
        self._advance(checkpoint)
        return checkpoint

    def anchors(self, min_size: int = 0) -> list[Anchor]:
        """Anchors the ledger reports, each with a verified tree head (not yet checked on chain:
        use ``ledger.anchor.verify_on_chain`` with a JSON-RPC endpoint you trust)."""
        response = self._call(
            "GetAnchors", pb.GetAnchorsRequest(version=WIRE_VERSION, min_size=min_size)
        )
        anchors = []
        for msg in response.anchors:
            anchor = anchor_from_pb(msg).anchor
            head = verify_tree_head(anchor.checkpoint, self.log_key)
            if (head.size, head.root) != (anchor.size, anchor.root):
                raise CheckFailed("anchor", "an anchor's root differs from its signed tree head")
            anchors.append(anchor)
        return anchors

    def access_heads(self, subject_commitment: str) -> list[Receipt]:
        """Every ``access_head`` entry naming ``subject_commitment`` (hex), oldest first, each
        receipt verified (log key, inclusion, a head consistent with those seen before) and
        checked to be an access head that names the commitment.

        The ledger could still leave an entry out of the answer (absence cannot be proven
        from a receipt); it would have to collude with the node for that to hide anything.
        """
        try:
            raw = bytes.fromhex(subject_commitment)
        except ValueError as exc:
            raise LedgerClientError("subject_commitment must be hex") from exc
        found: list[Receipt] = []
        after = 0
        while True:
            response = self._call("FindAccessHeads", pb.FindAccessHeadsRequest(
                version=WIRE_VERSION, subject_commitment=raw, after_index=after))
            for message in response.receipts:
                receipt = receipt_from_pb(message)
                self._verify(receipt)
                event = receipt.event
                if event.get("type") != "access_head" or subject_commitment not in (
                        event.get("subject_commitments") or []) or receipt.index < after:
                    raise CheckFailed("entry", "the ledger answered with an entry that is not "
                                               "an access head naming this commitment")
                found.append(receipt)
                after = receipt.index + 1
            if not response.more or not response.receipts:
                return found

    def _verify(self, receipt: Receipt) -> None:
        result = verify_receipt(receipt, self.log_key)
        for link in receipt.anchors:
            verify_anchor_link(link, result.checkpoint, receipt.index, self.log_key)
        self._advance(result.checkpoint)

    def _advance(self, checkpoint: Checkpoint) -> None:
        """Check a newly seen head against the previous one; never let the log fork."""
        with self._lock:
            seen = self._seen
        if seen is None or checkpoint.size == seen.size:
            if seen is not None and checkpoint.root != seen.root:
                raise CheckFailed("consistency", "two signed tree heads of one size differ")
            with self._lock:
                self._seen = checkpoint
            return
        old, new = sorted((seen, checkpoint), key=lambda c: c.size)
        if old.size > 0:
            proof = self.consistency(old.size, new.size)
            old_head, new_head = verify_consistency_proof(proof, self.log_key)
            if old_head.root != old.root or new_head.root != new.root:
                raise CheckFailed("consistency", "the ledger's tree heads do not extend each other")
        with self._lock:
            if self._seen is None or new.size > self._seen.size:
                self._seen = new
