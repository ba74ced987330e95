"""The gRPC ``sovereign.v1.LedgerService``: append, receipts, consistency, tree heads, anchors.

Served over TLS with health checking and reflection (``protos.transport``). Bad input gets
INVALID_ARGUMENT (or NOT_FOUND) with a message saying what was wrong; nothing is written then.
Error messages never echo event contents.

Append is open to any TLS client, because authority travels with each entry, not with the
connection: every entry must be signed by its author under the rules of ``ledger.authority``
(registered parties from ``ledger.authors``, customers' entries endorsed by their node).
A batch with one entry that fails is refused whole: UNAUTHENTICATED (no signature, or one
that does not verify), PERMISSION_DENIED (unknown author, kind not allowed, wrong node, no
endorsement), ALREADY_EXISTS (an entry the log holds already: a replayed append).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import orjson

from ledger.anchor import AnchorStore
from ledger.authority import authorize
from ledger.authors import Author, AuthorRegistry
from ledger.errors import (
    ConsistencyProofError,
    DuplicateEntry,
    EventError,
    LedgerError,
    PermissionDenied,
    StorageError,
    Unauthenticated,
)
from ledger.events import MAX_EVENT_BYTES
from ledger.log import Log
from ledger.models import Receipt
from ledger.wire import (
    WIRE_VERSION,
    anchor_to_pb,
    consistency_to_pb,
    log_key_to_pb,
    receipt_to_pb,
)
from protos.sovereign.v1 import ledger_pb2 as pb
from protos.sovereign.v1 import ledger_pb2_grpc as pb_grpc
from protos.transport import DEFAULT_MAX_MESSAGE_BYTES, RunningServer, serve

SERVICE_NAME = "sovereign.v1.LedgerService"
log = logging.getLogger(__name__)


def _check_version(request: Any, context: grpc.ServicerContext) -> None:
    if request.version != WIRE_VERSION:
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"unsupported message version {request.version}: set version to {WIRE_VERSION}",
        )


def _parse_event(raw: bytes, position: int) -> dict[str, Any]:
    if len(raw) > MAX_EVENT_BYTES:  # before parsing: the encoded entry may not exceed it either
        raise EventError(f"event {position} is larger than 16 KiB: record digests, not documents")
    try:
        event = orjson.loads(raw)  # refuses invalid UTF-8 as json.loads does after decoding
    except orjson.JSONDecodeError as exc:
        raise EventError(f"event {position} is not UTF-8 JSON") from exc
    if not isinstance(event, dict):
        raise EventError(f"event {position} must be a JSON object")
    return event


def append_events(
    ledger_log: Log, raw_events: Sequence[bytes], authors: Mapping[str, Author]
) -> list[Receipt]:
    """The Append path after the wire: parse each event, validate and encode it, verify its
    author's (and endorser's) signature under ``authors``, then append the batch whole
    (``Log.append_new``). Raises what ``Append`` maps to gRPC refusals; nothing is written
    then. ``bench/ledger.py`` measures exactly this function."""
    events = [_parse_event(raw, i) for i, raw in enumerate(raw_events)]
    return ledger_log.append_new(authorize(events, authors))


def _receipts_bytes(events: Sequence[bytes], tree_size: int, note: str) -> int:
    """An upper bound on the AppendResponse size: each receipt repeats its entry and the tree
    head and carries one 32-byte hash (plus framing) per tree level."""
    levels = (tree_size + len(events)).bit_length() + 1
    per_receipt = len(note.encode()) + levels * 36 + 256
    return sum(len(e) for e in events) + len(events) * per_receipt


class LedgerServicer(pb_grpc.LedgerServiceServicer):
    def __init__(
        self, ledger_log: Log, authors: AuthorRegistry, anchors: AnchorStore | None = None
    ) -> None:
        self.log = ledger_log
        self.authors = authors
        self.anchors = anchors

    def Append(
        self, request: pb.AppendRequest, context: grpc.ServicerContext
    ) -> pb.AppendResponse:
        _check_version(request, context)
        expected = _receipts_bytes(request.events, self.log.size, self.log.latest_note())
        if expected > DEFAULT_MAX_MESSAGE_BYTES:
            # Refuse before writing: an appended batch whose receipts cannot be sent back would
            # leave the client with an error for entries that are in the log.
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"nothing was appended: the receipts for {len(request.events)} events would "
                f"exceed the {DEFAULT_MAX_MESSAGE_BYTES // 2**20} MiB message limit; "
                "split the batch into smaller ones",
            )
        try:
            receipts = append_events(self.log, request.events, self.authors.current())
        except EventError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"nothing was appended: {exc}")
        except Unauthenticated as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"nothing was appended: {exc}")
        except PermissionDenied as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"nothing was appended: {exc}")
        except DuplicateEntry as exc:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except StorageError:
            log.exception("append failed in storage")
            context.abort(
                grpc.StatusCode.UNAVAILABLE, "the ledger could not store the batch; retry"
            )
        return pb.AppendResponse(
            version=WIRE_VERSION, receipts=[receipt_to_pb(r) for r in receipts]
        )

    def GetReceipt(
        self, request: pb.GetReceiptRequest, context: grpc.ServicerContext
    ) -> pb.Receipt:
        _check_version(request, context)
        if len(request.entry_hash) != self.log.hasher.size:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"entry_hash must be the {self.log.hasher.size}-byte leaf hash of the entry",
            )
        anchors = self.anchors.anchors() if request.with_anchors and self.anchors else []
        try:
            receipt = self.log.receipt(bytes(request.entry_hash), anchors=anchors)
        except LedgerError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return receipt_to_pb(receipt)

    def GetConsistencyProof(
        self, request: pb.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> pb.ConsistencyProof:
        _check_version(request, context)
        try:
            proof = self.log.consistency(request.old_size, request.new_size or None)
        except ConsistencyProofError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return consistency_to_pb(proof)

    def GetLatestTreeHead(
        self, request: pb.GetLatestTreeHeadRequest, context: grpc.ServicerContext
    ) -> pb.TreeHead:
        _check_version(request, context)
        note = self.log.latest_note()
        size = int(note.split("\n", 2)[1])
        return pb.TreeHead(version=WIRE_VERSION, checkpoint=note, size=size)

    def GetAnchors(
        self, request: pb.GetAnchorsRequest, context: grpc.ServicerContext
    ) -> pb.GetAnchorsResponse:
        _check_version(request, context)
        anchors = self.anchors.anchors(request.min_size) if self.anchors else []
        return pb.GetAnchorsResponse(
            version=WIRE_VERSION, anchors=[anchor_to_pb(a) for a in anchors]
        )

    def GetLogKey(self, request: pb.GetLogKeyRequest, context: grpc.ServicerContext) -> pb.LogKey:
        _check_version(request, context)
        return log_key_to_pb(self.log.public_key)

    def FindAccessHeads(
        self, request: pb.FindAccessHeadsRequest, context: grpc.ServicerContext
    ) -> pb.FindAccessHeadsResponse:
        """Read-only: the access heads naming one subject commitment (ledger.subjectindex)."""
        _check_version(request, context)
        if len(request.subject_commitment) != 32:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "subject_commitment must be the 32-byte SHA-256 salted commitment")
        receipts, more = self.log.find_access_heads(
            bytes(request.subject_commitment), request.after_index, request.limit or 1000)
        return pb.FindAccessHeadsResponse(
            version=WIRE_VERSION, receipts=[receipt_to_pb(r) for r in receipts], more=more)


def start_server(
    ledger_log: Log,
    *,
    address: str,
    cert_pem: bytes,
    key_pem: bytes,
    authors: AuthorRegistry,
    anchors: AnchorStore | None = None,
) -> RunningServer:
    """Serve ``ledger_log`` on ``address`` (e.g. ``127.0.0.1:0``) over TLS, accepting entries
    under the rules of ``ledger.authority`` with the parties in ``authors``."""
    servicer = LedgerServicer(ledger_log, authors, anchors)
    return serve(
        lambda server: pb_grpc.add_LedgerServiceServicer_to_server(servicer, server),
        [SERVICE_NAME],
        address=address,
        cert_pem=cert_pem,
        key_pem=key_pem,
    )
