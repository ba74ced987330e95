"""The wallet's ledger checks: the pinned log key and its fingerprint, and the verification of
a node's access-log anchors against the hash ledger (RFC 9162 receipts with C2SP signed tree
heads, verified offline by ``ledger.verify``).

A node claims "my chain head at sequence N, hash H, is in the ledger" and hands over the
ledger's receipt for the ``access_head`` event (docs/audit.md). The wallet accepts the claim
only when all of these hold:

1. H is the node's own chain hash at N, on the chain that ends at the node-signed head
   (checked by ``agent_node.client``: ``AnchorClaim.on_chain``);
2. the receipt's tree head is signed by the log key the wallet pinned at ``ledger set``, and
   its inclusion proof leads from the entry to that tree head;
3. the entry is an ``access_head`` event naming this node's DID, hash H and sequence N;
4. the entry is signed by that node: its ``author`` is the node's DID (a key the wallet
   pinned for the node, or one the node rotated from) and the author's signature verifies
   over the entry (``ledger.authority``). The ledger refuses an access head whose author is
   not the node it names, but the wallet does not take the ledger's word for it: a head
   another registered author wrote (another node, the coordinator, or anyone a careless or
   colluding ledger operator let in) must neither vouch for the node nor accuse it.

An access event with ``seq <= N`` that is itself verified on the chain is then covered: the
head's hash commits to the whole chain up to it. Events after the last anchored head are
"not yet anchored" (the node anchors on a schedule), which is not a failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from consent.canonical import canonicalize
from ledger.authority import verify_author
from ledger.errors import LedgerError
from ledger.models import LogPublicKey, Receipt
from ledger.verify import verify_receipt

VERIFIED = "verified"
FAILED = "failed"
NOT_ANCHORED = "not-anchored"
NO_LEDGER = "no-ledger"


def fingerprint(key: LogPublicKey) -> str:
    """SHA-256 of the log key's RFC 8785 canonical JSON, shown in groups of four for reading
    aloud; ``consent-wallet ledger fingerprint log-public.json`` prints the same value."""
    digest = hashlib.sha256(canonicalize(key.to_json())).hexdigest()
    return "SHA256:" + ":".join(digest[i:i + 4] for i in range(0, 64, 4))


@dataclass(frozen=True)
class LedgerCheck:
    """The ledger verdict for one access event."""

    status: str  # verified | failed | not-anchored | no-ledger
    detail: str
    sequence: int | None = None  # the anchored head that covers the event
    index: int | None = None  # that head's index in the ledger

    @property
    def verified(self) -> bool | None:
        """True or False when checked against the ledger, None when it could not be."""
        return {VERIFIED: True, FAILED: False}.get(self.status)


@dataclass(frozen=True)
class ClaimResult:
    sequence: int
    ok: bool
    detail: str
    index: int | None = None


def check_claim(claim: Any, node_did: str, log_key: LogPublicKey) -> ClaimResult:
    """Verify one ``agent_node.client.AnchorClaim``; the detail names the check that failed."""
    if not claim.on_chain:
        return ClaimResult(claim.sequence, False,
                           f"the anchored head {claim.sequence} is not on the node's hash chain")
    try:
        receipt = Receipt.from_json(claim.receipt)
        verify_receipt(receipt, log_key)
    except LedgerError as exc:
        return ClaimResult(claim.sequence, False, f"ledger receipt for head {claim.sequence}: "
                                                  f"{exc}")
    event = receipt.event
    expected = {"type": "access_head", "node": node_did, "head": claim.hash,
                "sequence": claim.sequence}
    wrong = sorted(k for k, v in expected.items() if event.get(k) != v)
    if wrong:
        return ClaimResult(claim.sequence, False,
                           f"the ledger entry for head {claim.sequence} records another "
                           f"{', '.join(wrong)}")
    problem = authorship_problem(receipt, [node_did])
    if problem:
        return ClaimResult(claim.sequence, False,
                           f"the ledger entry for head {claim.sequence}: {problem}")
    return ClaimResult(claim.sequence, True, "signed tree head and inclusion verified",
                       receipt.index)


def authorship_problem(receipt: Receipt, node_dids: Sequence[str]) -> str | None:
    """Why the access head in ``receipt`` is not the node's own word (None when it is): its
    author must be the node it names, one of ``node_dids`` (the node's pinned DID and the DIDs
    it rotated from), and the author's signature must verify over the entry."""
    event = receipt.event
    try:
        author = verify_author(event, receipt.entry)
    except LedgerError:
        return "it carries no valid author signature, so it is not the node's"
    if author != event.get("node") or author not in node_dids:
        return (f"it was written by {author[:64]}, not by the node it names, so it does not "
                "count")
    return None


def check_events(
    events: Sequence[dict[str, Any]], claims: Sequence[Any], node_did: str,
    log_key: LogPublicKey | None,
) -> dict[int, LedgerCheck]:
    """The ledger verdict per event ``seq`` (events as from ``NodeClient.access_events``)."""
    if log_key is None:
        detail = ("no ledger key is pinned: run `consent-wallet ledger set ADDR --ca FILE`"
                  if claims else "no ledger configured")
        return {int(e["seq"]): LedgerCheck(NO_LEDGER, detail) for e in events}
    results = [check_claim(c, node_did, log_key) for c in claims]
    verdicts = {}
    for event in events:
        seq = int(event["seq"])
        verdicts[seq] = _verdict(seq, bool(event.get("verified")), results)
    return verdicts


def _verdict(seq: int, on_chain: bool, results: list[ClaimResult]) -> LedgerCheck:
    covering = [r for r in results if r.sequence >= seq]
    if not covering:
        return LedgerCheck(NOT_ANCHORED, "not yet anchored: the node anchors its log on a "
                                         "schedule; look again later")
    good = [r for r in covering if r.ok]
    if good and on_chain:
        best = good[0]
        return LedgerCheck(VERIFIED, f"covered by head {best.sequence} at ledger index "
                                     f"{best.index}", best.sequence, best.index)
    if good:
        return LedgerCheck(FAILED, "the event is not on the node's verified hash chain",
                           good[0].sequence, good[0].index)
    return LedgerCheck(FAILED, covering[0].detail, covering[0].sequence)


# -- the listing against the heads the ledger holds (issue 11: no hidden access) -------------

MAX_RANGE = 1_000_000  # events one head may cover for the per-event tag check


@dataclass(frozen=True)
class Mismatch:
    """Accesses the node hid or changed under one anchored head."""

    count: int
    first_seq: int
    last_seq: int
    start: str | None  # latest time known before them (an event of yours, or an earlier head)
    end: str  # the time the covering head was anchored
    index: int  # the head's ledger index
    detail: str

    def sentence(self, address: str) -> str:
        between = f"between {self.start} and {self.end}" if self.start else f"before {self.end}"
        return (f"the node at {address} hid or changed {self.count} access(es) {between} "
                f"(events {self.first_seq}-{self.last_seq}, under the head at ledger index "
                f"{self.index}: {self.detail})")


@dataclass(frozen=True)
class ListingCheck:
    """The listing of one node checked against the heads that name this customer."""

    heads: int  # heads of this node naming the customer
    mismatches: list[Mismatch]
    not_anchored: int  # own events no head covers yet

    def to_json(self, address: str) -> dict[str, Any]:
        return {"heads": self.heads, "not_anchored": self.not_anchored,
                "mismatches": [{"count": m.count, "first_seq": m.first_seq,
                                "last_seq": m.last_seq, "start": m.start, "end": m.end,
                                "ledger_index": m.index, "message": m.sentence(address)}
                               for m in self.mismatches]}


def check_listing(events: Sequence[dict[str, Any]], head_seq: int, chain: dict[int, str],
                  heads: Sequence[Receipt], node_dids: Sequence[str], did: str,
                  salt: bytes) -> ListingCheck:
    """Check a node's listing of the customer's events against the ``access_head`` entries
    the ledger holds that name the customer's commitment (receipts already verified).

    Every such head of this node (its DID, or one it rotated from), signed by that DID,
    covers the events (``after``, ``sequence``]; its ``subject_events`` tags say exactly
    which of them touched the customer (``ledger.events.subject_event_tag``), and the
    listing must show exactly those, on the node's chain, whose hash at ``sequence`` must be
    the head's. A head without tags (too many to list) at least needs one of the customer's
    events in its range.
    ``events`` are the listing's (flat, with ``seq``, ``time``, ``verified``); ``chain`` is
    the node's chain hash per sequence as listed.
    """
    from ledger.events import subject_event_tag

    own = {int(e["seq"]): e for e in events if e.get("verified")}
    # Only heads the node itself signed count: one another author wrote naming this node
    # could otherwise accuse it of hiding accesses it never had (or cover ones it hid).
    mine = sorted((r for r in heads if r.event.get("node") in node_dids
                   and authorship_problem(r, node_dids) is None),
                  key=lambda r: int(r.event["sequence"]))
    mismatches: list[Mismatch] = []
    covered: set[int] = set()
    previous = 0
    for receipt in mine:
        event = receipt.event
        upto = int(event["sequence"])
        after = int(event.get("after", previous))
        previous = upto
        listed = {s for s in own if after < s <= upto}
        covered |= listed
        tags = event.get("subject_events")
        if tags is not None and upto - after <= MAX_RANGE:
            wanted = set(tags)
            expected = {s for s in range(after + 1, upto + 1)
                        if subject_event_tag(did, salt, s) in wanted}
            wrong = sorted(expected ^ listed)
            detail = "events it anchored as yours are missing from its listing"
        else:
            expected = listed
            wrong = [] if listed else [upto]
            detail = "it anchored an access to you there but lists none"
        if upto > head_seq:
            wrong = sorted(set(wrong) | {s for s in expected if s > head_seq} or {upto})
            detail = (f"its chain now ends at {head_seq}, before the head it anchored at "
                      f"{upto}")
        elif upto in chain and chain[upto] != event.get("head"):
            wrong = sorted(set(wrong) | expected or {upto})
            detail = "its chain no longer has the hash it anchored"
        if wrong:
            mismatches.append(Mismatch(
                len(wrong), wrong[0], wrong[-1], _time_before(wrong[0], own, mine),
                str(event.get("time")), receipt.index, detail))
    return ListingCheck(len(mine), mismatches, len(set(own) - covered))


def _time_before(seq: int, own: dict[int, dict[str, Any]], heads: Sequence[Receipt]
                 ) -> str | None:
    """The latest moment known to come before event ``seq``: one of the customer's own
    events, or a head anchored over earlier events."""
    times = [str(e.get("time")) for s, e in own.items() if s < seq and e.get("time")]
    times += [str(r.event.get("time")) for r in heads if int(r.event["sequence"]) < seq]
    return max(times) if times else None
