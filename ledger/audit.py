"""Audit logic behind ``sov-audit``: verify receipts (optionally against a chain), verify
consistency between two tree heads, and build and check offline audit bundles.

A bundle is one JSON file holding the log's public key, receipts (with their anchors),
consistency proofs and the nodes' signed erasure proofs whose ledger entries it holds (so an
erasure's content, its locations, digests and scan, is checked offline too, not only that an
entry exists); everything in it verifies with no network. Its log key is only as good as
the key the auditor compares it with, so ``verify`` takes ``--log-key`` and insists they match.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.authority import CUSTOMER_KINDS, check_customer_entry, check_entry
from ledger.authors import Author
from ledger.errors import AuthorityError, LedgerError
from ledger.models import ConsistencyProof, LogPublicKey, Receipt
from ledger.note import Checkpoint
from ledger.verify import (
    CheckFailed,
    load_receipt,
    verify_consistency_proof,
    verify_receipt,
    verify_tree_head,
)

LEGACY = "unauthenticated (legacy)"
BUNDLE_FORMAT = "sovereign-fabric-audit-bundle"
BUNDLE_VERSION = 1


@dataclass
class Outcome:
    """Checks passed and failed while verifying one or more items."""

    passed: list[str] = field(default_factory=list)
    failed: list[CheckFailed] = field(default_factory=list)
    legacy: list[str] = field(default_factory=list)  # unauthenticated entries accepted

    @property
    def ok(self) -> bool:
        return not self.failed and bool(self.passed)

    def run(self, label: str, check: Callable[[], str]) -> bool:
        try:
            detail = check()
        except CheckFailed as exc:
            self.failed.append(CheckFailed(exc.check, f"{label}: {exc.reason}"))
            return False
        except LedgerError as exc:
            self.failed.append(CheckFailed("format", f"{label}: {exc}"))
            return False
        self.passed.append(f"{label}: {detail}")
        return True


@dataclass(frozen=True)
class Bundle:
    log_key: LogPublicKey
    receipts: tuple[Receipt, ...]
    consistency: tuple[ConsistencyProof, ...] = ()
    erasures: tuple[dict[str, Any], ...] = ()  # signed erasure proofs (``ledger.erasure``)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "log_key": self.log_key.to_json(),
            "receipts": [r.to_json() for r in self.receipts],
            "consistency_proofs": [c.to_json() for c in self.consistency],
            "erasure_proofs": list(self.erasures),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Bundle:
        if doc.get("version") != BUNDLE_VERSION:
            raise CheckFailed(
                "bundle format", f"unsupported bundle version: expected {BUNDLE_VERSION}"
            )
        receipts, proofs = doc.get("receipts", []), doc.get("consistency_proofs", [])
        erasures = doc.get("erasure_proofs", [])  # absent from bundles made before them
        if not isinstance(receipts, list) or not isinstance(proofs, list):
            raise CheckFailed("bundle format", "receipts and consistency_proofs must be lists")
        if not isinstance(erasures, list) or not all(isinstance(e, dict) for e in erasures):
            raise CheckFailed("bundle format", "erasure_proofs must be a list of signed "
                              "erasure proofs")
        if not receipts and not proofs and not erasures:
            raise CheckFailed("bundle format", "the bundle holds nothing to verify")
        try:
            return cls(
                LogPublicKey.from_json(doc.get("log_key")),
                tuple(Receipt.from_json(r) for r in receipts),
                tuple(ConsistencyProof.from_json(c) for c in proofs),
                tuple(erasures),
            )
        except LedgerError as exc:
            raise CheckFailed("bundle format", str(exc)) from exc


def load_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckFailed("file", f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CheckFailed("file", f"{path} is not JSON") from exc
    if not isinstance(doc, dict):
        raise CheckFailed("file", f"{path} is not a JSON object")
    return doc


def load_items(path: Path) -> tuple[list[Receipt], list[ConsistencyProof], LogPublicKey | None]:
    """Read a receipt or a bundle file; of an erasure or migration receipt, the ledger
    receipt of its erasure entry, once its signed parts check (:func:`erasure_proofs`)."""
    doc = load_json(path)
    if doc.get("format") == BUNDLE_FORMAT:
        bundle = Bundle.from_json(doc)
        return list(bundle.receipts), list(bundle.consistency), bundle.log_key
    if doc.get("format") in _proof_formats():
        return [receipt for receipt, _ in erasure_proofs(doc, str(path))], [], None
    return [load_receipt(json.dumps(doc))], [], None


def bundled_erasures(doc: Mapping[str, Any], label: str = "bundle") -> list[dict[str, Any]]:
    """The signed erasure proofs a bundle carries, each signature verified (CheckFailed
    naming the first that does not); [] for any other document."""
    from ledger.erasure import ErasureError, verify_proof

    if doc.get("format") != BUNDLE_FORMAT:
        return []
    erasures = list(Bundle.from_json(dict(doc)).erasures)
    for n, proof in enumerate(erasures):
        try:
            verify_proof(proof)
        except ErasureError as exc:
            raise CheckFailed("erasure", f"{label} erasure proof {n + 1}: {exc}") from exc
    return erasures


def _proof_formats() -> tuple[str, str]:
    from ledger import erasure, migration

    return erasure.RECEIPT_FORMAT, migration.RECEIPT_FORMAT


def erasure_proofs(doc: Mapping[str, Any], label: str = "receipt"
                   ) -> list[tuple[Receipt, dict[str, Any]]]:
    """(ledger receipt of the erasure entry, the node's signed proof) of an erasure receipt
    (``ledger.erasure``) or a migration receipt (``ledger.migration``: its request, export and
    import are checked first); CheckFailed when a signed part fails, when the entry names
    another proof, or when the proof is not anchored yet."""
    from ledger.erasure import ErasureError, check_entry, verify_proof
    from ledger.migration import RECEIPT_FORMAT, MigrationError, check_receipt

    if doc.get("format") == RECEIPT_FORMAT:
        try:
            check_receipt(doc)
        except MigrationError as exc:
            raise CheckFailed("migration", f"{label}: {exc}") from exc
        doc = doc.get("erasure") or {}
    proof, raw = doc.get("proof"), doc.get("receipt")
    try:
        verify_proof(proof)
    except ErasureError as exc:
        raise CheckFailed("erasure", f"{label}: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckFailed("erasure", f"{label}: the proof is not anchored in the ledger yet "
                          "(no receipt)")
    try:
        receipt = load_receipt(json.dumps(raw))
        check_entry(proof, receipt.event)  # type: ignore[arg-type]
    except ErasureError as exc:
        raise CheckFailed("erasure", f"{label}: {exc}") from exc
    assert isinstance(proof, dict)
    return [(receipt, proof)]


@dataclass(frozen=True)
class AuthorityPolicy:
    """How ``sov-audit verify`` judges who wrote each entry (``ledger.authority``).

    ``authors``: the operator's authors file (``sov-ledger authors list --json``), by DID;
    without it every signature and node rule is still checked, registration is not.
    ``accept_legacy``: entries written before entries were signed pass as "unauthenticated
    (legacy)" instead of failing. ``grants``: verified grants by digest, whose customers'
    entries must then be written with the grant's own ledger key.
    """

    authors: Mapping[str, Author] | None = None
    accept_legacy: bool = False
    grants: Mapping[str, Any] = field(default_factory=dict)


def describe_authority(event: Mapping[str, Any], authors: Mapping[str, Author] | None) -> str:
    """Who wrote a verified entry, in words."""

    def who(did: str) -> str:
        party = authors.get(did) if authors is not None else None
        if party is None:
            return did
        removed = f", removed {party.removed}" if party.removed else ""
        return f"{did} ({party.role} {party.name!r}{removed})"

    if "endorser" in event:
        text = (f"written by the customer's per-grant key {event['author']}, endorsed by "
                f"{who(event['endorser'])}")
    else:
        text = f"written by {who(event['author'])}"
    return text if authors is not None else f"{text}; registration not checked (no --authors)"


def check_authority(
    outcome: Outcome, label: str, receipt: Receipt, policy: AuthorityPolicy
) -> None:
    """The ``authority`` check of one (verified) receipt's entry."""
    event = receipt.event
    if "author" not in event and "signature" not in event:
        what = (f"entry {receipt.index} ({event.get('type')}) is {LEGACY}: it carries no "
                "author signature")
        if policy.accept_legacy:
            outcome.legacy.append(f"{label}: {what}")
            return
        outcome.failed.append(CheckFailed(
            "authority", f"{label}: {what}; pass --accept-legacy to accept entries written "
            "before ledger entries were signed"))
        return

    def run() -> str:
        try:
            check_entry(event, receipt.entry, policy.authors)
            grant = policy.grants.get(event.get("grant_digest", ""))
            if grant is not None and event.get("type") in CUSTOMER_KINDS:
                check_customer_entry(event, grant)
        except AuthorityError as exc:
            raise CheckFailed("authority", str(exc)) from exc
        mine = " (the customer's own: the key its grant binds)" if grant is not None and \
            event.get("type") in CUSTOMER_KINDS else ""
        return f"entry {receipt.index} {describe_authority(event, policy.authors)}{mine}"

    outcome.run(label, run)


def check_receipt(
    outcome: Outcome, label: str, receipt: Receipt, log_key: LogPublicKey, chain: Any = None,
    policy: AuthorityPolicy | None = None,
) -> None:
    """Signature + inclusion (+ anchor links); with ``chain`` (a web3 client) also on-chain;
    with ``policy`` also the entry's authority (who wrote it, and whether they could)."""

    def offline() -> str:
        result = verify_receipt(receipt, log_key)
        anchored = f", anchored at sizes {list(result.anchored_sizes)}" if receipt.anchors else ""
        return (
            f"entry {receipt.index} ({receipt.event.get('type')}) is in the signed tree of size "
            f"{result.checkpoint.size}{anchored}"
        )

    if not outcome.run(label, offline):
        return
    if policy is not None:
        check_authority(outcome, label, receipt, policy)
    if chain is not None:
        outcome.run(label, lambda: _check_on_chain(receipt, log_key, chain))


def _check_on_chain(receipt: Receipt, log_key: LogPublicKey, chain: Any) -> str:
    from ledger.anchor import verify_on_chain

    if not receipt.anchors:
        raise CheckFailed(
            "chain anchor",
            "the receipt carries no anchor: fetch it again with anchors once the log was anchored",
        )
    for link in receipt.anchors:
        verify_on_chain(link.anchor, chain, log_key.origin)
    sizes = ", ".join(f"{a.anchor.size} (tx {a.anchor.tx_hash})" for a in receipt.anchors)
    return f"the chain carries tree heads covering entry {receipt.index}: sizes {sizes}"


def check_consistency(
    outcome: Outcome, label: str, proof: ConsistencyProof, log_key: LogPublicKey
) -> None:
    def run() -> str:
        old, new = verify_consistency_proof(proof, log_key)
        return f"the tree of size {old.size} is a prefix of the tree of size {new.size}"

    outcome.run(label, run)


def read_tree_head(path: Path, log_key: LogPublicKey) -> Checkpoint:
    """A signed tree head from a checkpoint file or from a receipt's checkpoint."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CheckFailed("file", f"cannot read {path}: {exc.strerror}") from exc
    if text.lstrip().startswith("{"):
        text = load_receipt(text).checkpoint
    return verify_tree_head(text, log_key)


def check_heads_match(proof: ConsistencyProof, old: Checkpoint, new: Checkpoint) -> None:
    def head(note: str) -> Checkpoint:
        return Checkpoint.parse(note.split("\n\n")[0] + "\n")

    if head(proof.old_checkpoint) != old or head(proof.new_checkpoint) != new:
        raise CheckFailed(
            "consistency", "the proof is for other tree heads than the two files given"
        )


def build_bundle(
    receipts: Sequence[Receipt], proofs: Sequence[ConsistencyProof], log_key: LogPublicKey,
    erasures: Sequence[dict[str, Any]] = (),
) -> tuple[Bundle, Outcome]:
    """Verify everything, then bundle it; the caller writes it only if ``outcome.ok``."""
    outcome = Outcome()
    for i, receipt in enumerate(receipts):
        check_receipt(outcome, f"receipt {i + 1}", receipt, log_key)
    for i, proof in enumerate(proofs):
        check_consistency(outcome, f"consistency proof {i + 1}", proof, log_key)
    check_bundled_erasures(outcome, "bundle", erasures, receipts)
    return Bundle(log_key, tuple(receipts), tuple(proofs), tuple(erasures)), outcome


def check_bundled_erasures(outcome: Outcome, label: str, erasures: Sequence[Any],
                           receipts: Sequence[Receipt]) -> None:
    """Each signed erasure proof of a bundle: its signature (what it says is reported), and
    that a receipt of the bundle is its ``erasure`` entry (a proof changed in any field names
    no entry any more). The receipts themselves are checked as any others."""
    from ledger.erasure import ErasureError, check_entry, proof_digest

    entries = {r.event.get("proof_digest"): r for r in receipts
               if r.event.get("type") == "erasure"}
    for n, proof in enumerate(erasures):
        item = f"{label} erasure proof {n + 1}"
        if not outcome.run(item, functools.partial(erasure_summary, proof)):
            continue

        def named(proof: dict[str, Any] = proof) -> str:
            receipt = entries.get(proof_digest(proof))
            if receipt is None:
                raise CheckFailed("erasure", "no receipt of the bundle is this proof's ledger "
                                  "entry (the proof was changed, or its entry left out)")
            try:
                check_entry(proof, receipt.event)
            except ErasureError as exc:
                raise CheckFailed("erasure", str(exc)) from exc
            return f"ledger entry {receipt.index} is the erasure entry of exactly this proof"

        outcome.run(item, named)


def erasure_summary(proof: Any) -> str:
    """What a node's signed erasure proof says, in one line, once its signature verifies
    (CheckFailed otherwise)."""
    from ledger.erasure import ErasureError, scan_hits, verify_proof

    try:
        signer = verify_proof(proof)
    except ErasureError as exc:
        raise CheckFailed("erasure", str(exc)) from exc
    rows = sum(int(loc.get("rows", 0)) for loc in proof["locations"])
    files = proof["scan"].get("files", [])
    return (f"erasure proof signed by {signer} at {proof['erased_at']}: {rows} row(s) "
            f"destroyed in {len(proof['locations'])} location(s), "
            f"{len(proof['destroyed_keys'])} data key(s) destroyed, scan of {len(files)} "
            f"file(s) for {proof['scan'].get('needles')} value(s): "
            f"{scan_hits(proof)} hit(s)")


def check_erasure(outcome: Outcome, label: str, document: Mapping[str, Any],
                  log_key: LogPublicKey, chain: Any = None,
                  policy: AuthorityPolicy | None = None) -> None:
    """An erasure receipt (``ledger.erasure``): the node's signed proof, the ledger receipt
    of its ``erasure`` entry (signature, inclusion, authority) and that the entry names
    exactly this proof. A proof changed in any field fails its signature or the entry."""
    from ledger.erasure import ErasureError, check_entry

    proof = document.get("proof")
    if not outcome.run(label, functools.partial(erasure_summary, proof)):
        return
    raw = document.get("receipt")
    if not isinstance(raw, dict):
        outcome.failed.append(CheckFailed("erasure", f"{label}: the proof is not anchored in "
                                          "the ledger yet (no receipt)"))
        return
    try:
        receipt = load_receipt(json.dumps(raw))
    except LedgerError as exc:
        outcome.failed.append(CheckFailed("format", f"{label}: {exc}"))
        return
    check_receipt(outcome, label, receipt, log_key, chain, policy)

    def named() -> str:
        try:
            check_entry(proof, receipt.event)  # type: ignore[arg-type]
        except ErasureError as exc:
            raise CheckFailed("erasure", str(exc)) from exc
        return f"ledger entry {receipt.index} is the erasure entry of exactly this proof"

    outcome.run(label, named)


def check_migration(outcome: Outcome, label: str, document: Mapping[str, Any],
                    log_key: LogPublicKey, chain: Any = None,
                    policy: AuthorityPolicy | None = None) -> None:
    """A migration receipt (``ledger.migration``): the customer's signed request, the source
    node's signed export it names, the destination's signed import receipt answering it,
    then the source's erasure receipt as :func:`check_erasure` checks it."""
    from ledger.migration import MigrationError, check_receipt

    def signed() -> str:
        try:
            said = check_receipt(document)
        except MigrationError as exc:
            raise CheckFailed("migration", str(exc)) from exc
        return (f"migration of {said['customer']}: {said['rows']} row(s) exported by "
                f"{said['from']} ({said['export']}), imported at {said['imported_at']} "
                f"(receipt signed by {said['to']}), erased at the source at "
                f"{said['erased_at']}")

    if outcome.run(label, signed):
        check_erasure(outcome, f"{label} (erasure at the source)",
                      document.get("erasure") or {}, log_key, chain, policy)
