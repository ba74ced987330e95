"""wallet.anchoring: the verdict per access event from a node's anchor claims, with receipts
from a real ledger log (ledger.log over SQLite, signed C2SP tree heads) and the log's key.
Access heads are signed by their node (ledger.authority), as the ledger service requires; the
log is written to directly here so that heads the service would refuse (another author) can
be planted, as a careless or colluding ledger operator could."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_node.client import AnchorClaim
from consent.identity import Identity
from ledger.authority import sign_entry
from ledger.events import make_event
from ledger.home import init_home, open_log
from ledger.models import LogPublicKey
from wallet.anchoring import check_events, fingerprint

NODE_KEY = Identity.generate()
NODE = NODE_KEY.did
OTHER_KEY = Identity.generate()  # another registered author (another node, the coordinator)
HEAD = "cd" * 32


def _head(key: Identity, **fields: object) -> dict[str, object]:
    """An access_head event signed by ``key`` as its author (``node`` names whoever it claims)."""
    return sign_entry(make_event("access_head", **{"node": NODE, **fields}), key)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[LogPublicKey, dict[str, object]]:
    """A log holding one access_head for (NODE, HEAD, 3), one for another node, and one
    naming NODE but written by another author."""
    home = tmp_path_factory.mktemp("ledger") / "ledger"
    key = init_home(home, origin="ledger.test.example/log", passphrase="pw")
    log = open_log(home, "pw")
    try:
        ours, theirs, forged, unsigned = log.append([
            _head(NODE_KEY, head=HEAD, sequence=3),
            _head(OTHER_KEY, node=OTHER_KEY.did, head=HEAD, sequence=3),
            _head(OTHER_KEY, head=HEAD, sequence=3),
            make_event("access_head", node=NODE, head=HEAD, sequence=3),
        ])
        ours = log.receipt(ours.entry_hash)  # against the latest tree head
    finally:
        log.close()
    return key, {"ours": ours.to_json(), "theirs": theirs.to_json(),
                 "forged": forged.to_json(), "unsigned": unsigned.to_json()}


def _events(*seqs: int, verified: bool = True) -> list[dict[str, object]]:
    return [{"seq": s, "verified": verified} for s in seqs]


def test_covered_events_verify_and_later_ones_are_not_anchored(ledger: tuple) -> None:
    key, receipts = ledger
    claim = AnchorClaim(3, HEAD, receipts["ours"], on_chain=True)
    verdicts = check_events(_events(1, 3, 4), [claim], NODE, key)
    assert [verdicts[s].verified for s in (1, 3, 4)] == [True, True, None]
    assert verdicts[1].status == "verified" and verdicts[1].sequence == 3
    assert verdicts[1].index == 0 and "ledger index 0" in verdicts[1].detail
    assert verdicts[4].status == "not-anchored"


@pytest.mark.parametrize("case, fragment", [
    ("off-chain", "not on the node's hash chain"),
    ("other-node", "records another node"),
    ("other-head", "records another head"),
    ("other-key", "tree-head signature"),
    ("garbage", "receipt"),
    ("forged", "not by the node it names"),
    ("unsigned", "no valid author signature"),
])
def test_a_bad_claim_fails_with_the_check_named(ledger: tuple, tmp_path: Path, case: str,
                                                fragment: str) -> None:
    key, receipts = ledger
    claim = {
        "off-chain": AnchorClaim(3, HEAD, receipts["ours"], on_chain=False),
        "other-node": AnchorClaim(3, HEAD, receipts["theirs"], on_chain=True),
        "other-head": AnchorClaim(3, "ef" * 32, receipts["ours"], on_chain=True),
        "other-key": AnchorClaim(3, HEAD, receipts["ours"], on_chain=True),
        "garbage": AnchorClaim(3, HEAD, {"format": "nonsense"}, on_chain=True),
        # the attack: a head naming NODE, its head and sequence, but another author's word
        "forged": AnchorClaim(3, HEAD, receipts["forged"], on_chain=True),
        "unsigned": AnchorClaim(3, HEAD, receipts["unsigned"], on_chain=True),
    }[case]
    if case == "other-key":
        key = init_home(tmp_path / "other", origin=key.origin, passphrase="pw")
    [verdict] = check_events(_events(2), [claim], NODE, key).values()
    assert verdict.verified is False and verdict.status == "failed"
    assert fragment in verdict.detail


def test_an_event_off_the_nodes_chain_is_not_covered(ledger: tuple) -> None:
    key, receipts = ledger
    claim = AnchorClaim(3, HEAD, receipts["ours"], on_chain=True)
    [verdict] = check_events(_events(2, verified=False), [claim], NODE, key).values()
    assert verdict.verified is False and "not on the node's verified hash chain" in verdict.detail


def test_without_a_pinned_key_nothing_is_claimed(ledger: tuple) -> None:
    _, receipts = ledger
    claim = AnchorClaim(3, HEAD, receipts["ours"], on_chain=True)
    [verdict] = check_events(_events(1), [claim], NODE, None).values()
    assert verdict.verified is None and verdict.status == "no-ledger"
    assert "consent-wallet ledger set" in verdict.detail


def test_fingerprint_depends_on_the_key(ledger: tuple, tmp_path: Path) -> None:
    key, _ = ledger
    other = init_home(tmp_path / "other", origin=key.origin, passphrase="pw")
    assert fingerprint(key) == fingerprint(LogPublicKey.from_json(key.to_json()))
    assert fingerprint(key) != fingerprint(other)
    assert len(fingerprint(key).split(":")) == 17  # "SHA256" + 16 groups of 4 hex digits


# -- check_listing: the node's listing against the heads the ledger holds --------------------

DID = Identity.generate().did
SALT = bytes(range(32))


def _head_receipts(tmp_path: Path, *heads: dict[str, object],
                   author: Identity = NODE_KEY) -> list[object]:
    home = tmp_path / "heads"
    init_home(home, origin="ledger.test.example/log", passphrase="pw")
    log = open_log(home, "pw")
    try:
        return [log.receipt(r.entry_hash) for r in log.append(
            [_head(author, **h) for h in heads])]
    finally:
        log.close()


def _tags(*seqs: int) -> list[str]:
    from ledger.events import subject_event_tag

    return sorted(subject_event_tag(DID, SALT, s) for s in seqs)


def _listed(*seqs: int) -> list[dict[str, object]]:
    return [{"seq": s, "verified": True, "time": f"2026-01-01T00:00:0{s}Z"} for s in seqs]


def test_a_listing_matching_its_heads_passes_and_counts_the_unanchored(tmp_path: Path) -> None:
    from wallet.anchoring import check_listing

    heads = _head_receipts(tmp_path, {"head": HEAD, "sequence": 3, "after": 0,
                                      "subject_events": _tags(1, 3)})
    result = check_listing(_listed(1, 3, 5), 5, {3: HEAD}, heads, [NODE], DID, SALT)
    assert result.mismatches == [] and result.heads == 1 and result.not_anchored == 1


def test_an_extra_a_missing_event_and_a_changed_hash_are_found(tmp_path: Path) -> None:
    from wallet.anchoring import check_listing

    heads = _head_receipts(
        tmp_path,
        {"head": HEAD, "sequence": 3, "after": 0, "subject_events": _tags(1, 3)},
        {"head": "ef" * 32, "sequence": 6, "after": 3, "subject_events": _tags(5)},
    )
    # 2 is listed but was not anchored as ours, 3 is missing; at 6 the chain has another hash.
    result = check_listing(_listed(1, 2, 5), 7, {3: HEAD, 6: "00" * 32}, heads, [NODE], DID,
                           SALT)
    first, second = result.mismatches
    assert (first.count, first.first_seq, first.last_seq) == (2, 2, 3)
    assert first.start == "2026-01-01T00:00:01Z"
    assert "no longer has the hash it anchored" in second.detail and second.count == 1
    assert "hid or changed 2 access(es) between" in first.sentence("n:1")


def test_a_head_without_tags_needs_one_event_and_other_nodes_heads_are_ignored(
    tmp_path: Path
) -> None:
    from wallet.anchoring import check_listing

    heads = _head_receipts(tmp_path, {"head": HEAD, "sequence": 3, "after": 0})
    assert check_listing(_listed(2), 3, {}, heads, [NODE], DID, SALT).mismatches == []
    [gap] = check_listing([], 3, {}, heads, [NODE], DID, SALT).mismatches
    assert gap.count == 1 and "lists none" in gap.detail and gap.start is None
    other = check_listing([], 3, {}, heads, [Identity.generate().did], DID, SALT)
    assert other.heads == 0 and other.mismatches == []


def test_a_head_another_author_wrote_neither_accuses_nor_covers(tmp_path: Path) -> None:
    """The attack: another registered author (here a second node's key) writes access heads
    naming our node. With tags for events the node never had, they would accuse it of hiding
    accesses; they must not count at all, while the node's own signed head still does."""
    from wallet.anchoring import check_listing

    forged = _head_receipts(tmp_path / "forged",
                            {"head": HEAD, "sequence": 3, "after": 0,
                             "subject_events": _tags(1, 2, 3)}, author=OTHER_KEY)
    result = check_listing(_listed(1), 3, {3: HEAD}, forged, [NODE], DID, SALT)
    assert result.heads == 0 and result.mismatches == [] and result.not_anchored == 1
    own = _head_receipts(tmp_path / "own", {"head": HEAD, "sequence": 3, "after": 0,
                                             "subject_events": _tags(1, 2, 3)})
    [gap] = check_listing(_listed(1), 3, {3: HEAD}, [*forged, *own], [NODE], DID,
                          SALT).mismatches
    assert (gap.first_seq, gap.last_seq) == (2, 3)  # only the node's own head accuses it
