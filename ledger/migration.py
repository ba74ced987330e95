"""Migration of a customer from one node to another: the protocol the wallet, both nodes and
``sov-audit`` speak (issue 13).

1. Node A's **export**: the node-signed reply document of A's ``Export`` RPC (``consent.protocol``:
   ``{"v", "method": "Export", "in_reply_to", "body": {"export": {...}}, "proof"}``), whose
   ``body.export`` names the customer (``subject``) and A (``node``).
2. The customer's **migration request**, their consent that node B holds what A exported
   (a W3C Data Integrity document signed by the wallet; gm: with the SM2 chain)::

       {"type": "MigrationRequest", "v": 1, "subject": <customer DID>, "from": <A's DID>,
        "to": <B's DID>, "migration": <32 hex>, "export": <SHA-256 hex of A's signed export
        document, canonical JSON>, "issued": <RFC 3339 UTC>, "proof": ...}

3. Node B's **import receipt**, signed by B::

       {"type": "ImportReceipt", "v": 1, "customer", "node": <B>, "from": <A>, "migration",
        "export": <digest>, "request": <SHA-256 of the migration request>,
        "datasets": {name: rows imported}, "imported_at", "proof": ...}

4. Node A's **erasure receipt** (``ledger.erasure``).

A **migration receipt** (what ``consent-wallet receipts`` writes and ``sov-audit verify``
checks) holds all of them: ``{"format": RECEIPT_FORMAT, "request", "export", "import": <B's
receipt>, "erasure": <A's erasure receipt>}``, where ``export`` is ``{"digest": <the export's
digest>}``: once B confirmed the import the wallet keeps no copy of the customer's data, only
the digest that the customer's request and B's signed receipt both name (B checked A's
signature over the export before importing it). A receipt of an older wallet may hold A's
whole signed export document instead; it is then checked too, row counts included.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from consent.canonical import canonical_sha256
from consent.errors import ConsentError
from consent.identity import Identity
from consent.integrity import format_time, sign_document, verify_document
from ledger.errors import LedgerError

REQUEST_TYPE = "MigrationRequest"
IMPORT_TYPE = "ImportReceipt"
RECEIPT_FORMAT = "sovereign-fabric/migration-receipt/v1"
VERSION = 1
MAX_REQUEST_AGE = timedelta(days=30)
_ID = re.compile(r"[0-9a-f]{32}")
IMPORT_FIELDS = {"type", "v", "customer", "node", "from", "migration", "export", "request",
                 "datasets", "imported_at", "proof"}


class MigrationError(LedgerError):
    """A migration request, export or import receipt is malformed, forged or not for this
    party (one sentence)."""


def new_migration_id() -> str:
    return secrets.token_hex(16)


def export_digest(document: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of A's signed export document, canonical JSON."""
    return canonical_sha256(dict(document))


def request_hash(request: Mapping[str, Any]) -> str:
    return canonical_sha256(dict(request))


def issue_request(identity: Identity, *, source: str, target: str, migration: str,
                  export: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The customer's signed consent that ``target`` import what ``source`` exported."""
    return sign_document({"type": REQUEST_TYPE, "v": VERSION, "subject": identity.did,
                          "from": source, "to": target, "migration": migration,
                          "export": export_digest(export),
                          "issued": format_time(now or datetime.now(UTC))}, identity)


def verify_request(request: Any, node_did: str, *, caller: str | None = None,
                   require_sm2: bool = False, now: datetime | None = None,
                   clock_skew: timedelta = timedelta(minutes=5)) -> str:
    """The customer DID of a valid migration request to ``node_did``; MigrationError else."""
    if not isinstance(request, dict) or request.get("type") != REQUEST_TYPE \
            or request.get("v") != VERSION:
        raise MigrationError("the import needs the customer's signed MigrationRequest "
                             "(consent-wallet migrate makes one)")
    try:
        signer = verify_document(request, require_sm2=require_sm2)
    except ConsentError as exc:
        raise MigrationError(f"the migration request's signature does not verify ({exc}); "
                             "only the customer's wallet can sign it") from None
    if request.get("subject") != signer:
        raise MigrationError("the migration request is not signed by the customer it names")
    if caller is not None and caller != signer:
        raise MigrationError("the migration request is another customer's: a wallet may only "
                             "move its own data")
    if request.get("to") != node_did:
        raise MigrationError("the migration request names another destination node")
    if not isinstance(request.get("migration"), str) or not _ID.fullmatch(request["migration"]):
        raise MigrationError("the migration request's id must be 32 hex digits")
    issued = _time(request.get("issued"))
    now = now or datetime.now(UTC)
    if issued > now + clock_skew:
        raise MigrationError("the migration request is issued in the future; check the clock")
    if issued < now - MAX_REQUEST_AGE:
        raise MigrationError("the migration request is older than 30 days; start a new "
                             "migration")
    return signer


def verify_export(document: Any, request: Mapping[str, Any]) -> dict[str, Any]:
    """The export (``body.export``) of A's signed export document, checked against the
    customer's request: signed by the request's source node, of its customer, the very
    document the request names."""
    if not isinstance(document, dict) or document.get("method") != "Export":
        raise MigrationError("the export must be the source node's signed Export reply")
    try:
        signer = verify_document(document)
    except ConsentError as exc:
        raise MigrationError(f"the export's signature does not verify ({exc}): it was "
                             "changed after the source node signed it") from None
    if signer != request.get("from"):
        raise MigrationError("the export is not signed by the node the request moves from")
    if export_digest(document) != request.get("export"):
        raise MigrationError("the export is not the one the customer's request names")
    export = (document.get("body") or {}).get("export")
    if not isinstance(export, dict) or export.get("subject") != request.get("subject") \
            or export.get("node") != signer:
        raise MigrationError("the export is another customer's or another node's")
    if not isinstance(export.get("datasets"), dict):
        raise MigrationError("the export holds no datasets")
    return export


def sign_import(statement: dict[str, Any], identity: Identity) -> dict[str, Any]:
    """Node B's signed import receipt (Ed25519; the SM2 chain too with a gm identity)."""
    return sign_document({"type": IMPORT_TYPE, "v": VERSION, **statement}, identity)


def verify_import(receipt: Any, *, node_did: str | None = None,
                  request: Mapping[str, Any] | None = None) -> str:
    """The signing node's DID of a valid import receipt that answers ``request``."""
    if not isinstance(receipt, dict) or receipt.get("type") != IMPORT_TYPE \
            or receipt.get("v") != VERSION or set(receipt) != IMPORT_FIELDS:
        raise MigrationError("not an ImportReceipt document of this protocol")
    try:
        signer = verify_document(receipt)
    except ConsentError as exc:
        raise MigrationError(f"the import receipt's signature does not verify ({exc})") \
            from None
    if receipt["node"] != signer:
        raise MigrationError("the import receipt is not signed by the node it names")
    if node_did is not None and signer != node_did:
        raise MigrationError("the import receipt is signed by another node")
    if request is not None:
        expected = {"customer": request.get("subject"), "from": request.get("from"),
                    "node": request.get("to"), "migration": request.get("migration"),
                    "export": request.get("export"), "request": request_hash(request)}
        wrong = sorted(k for k, v in expected.items() if receipt.get(k) != v)
        if wrong:
            raise MigrationError(f"the import receipt answers another request ({wrong[0]} "
                                 "differs)")
    return signer


def check_receipt(document: Mapping[str, Any]) -> dict[str, str]:
    """Check a migration receipt's signed parts against each other (not the ledger: the
    erasure's entry is checked by ``sov-audit`` with ``ledger.erasure``); what each says."""
    from ledger.erasure import ErasureError, verify_proof

    request = document.get("request")
    customer = verify_request(request, str((request or {}).get("to")),
                              now=_time(request.get("issued")) if isinstance(request, dict)
                              else None)
    assert isinstance(request, dict)
    exported = document.get("export")
    rows: dict[str, int] | None = None  # per dataset, when the receipt holds the export
    if isinstance(exported, dict) and set(exported) == {"digest"}:
        if exported["digest"] != request.get("export"):
            raise MigrationError("the export digest is not the one the customer's request names")
    else:
        export = verify_export(exported, request)
        rows = {name: len(r) for name, r in export["datasets"].items()}
    verify_import(document.get("import"), node_did=request["to"], request=request)
    erasure = document.get("erasure") or {}
    try:
        verify_proof(erasure.get("proof"), node_did=request["from"], customer=customer)
    except ErasureError as exc:
        raise MigrationError(f"the source node's erasure proof: {exc}") from None
    imported = document["import"]["datasets"]
    if rows is not None and imported != rows:
        raise MigrationError("the destination imported other row counts than the export holds")
    return {"customer": customer, "from": request["from"], "to": request["to"],
            "rows": str(sum(int(n) for n in imported.values())),
            "export": "signed export checked" if rows is not None else "export kept as its "
            "digest", "imported_at": document["import"]["imported_at"],
            "erased_at": erasure["proof"]["erased_at"]}


def _time(value: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise MigrationError("a time must be RFC 3339 UTC, e.g. 2026-01-01T00:00:00Z") from None
    if moment.tzinfo is None:
        raise MigrationError("a time must carry its zone (end it with Z)")
    return moment
