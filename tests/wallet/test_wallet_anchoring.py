"""wallet.anchoring: the verdict per access event from a node's anchor claims, with receipts
from a real ledger log (ledger.log over SQLite, signed C2SP tree heads) and the log's key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_node.client import AnchorClaim
from consent.identity import Identity
from ledger.events import make_event
from ledger.home import init_home, open_log
from ledger.models import LogPublicKey
from wallet.anchoring import check_events, fingerprint

NODE = Identity.generate().did
HEAD = "cd" * 32


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[LogPublicKey, dict[str, object]]:
    """A log holding one access_head for (NODE, HEAD, 3) and one for another node."""
    home = tmp_path_factory.mktemp("ledger") / "ledger"
    key = init_home(home, origin="ledger.test.example/log", passphrase="pw")
    log = open_log(home, "pw")
    try:
        ours, theirs = log.append([
            make_event("access_head", node=NODE, head=HEAD, sequence=3),
            make_event("access_head", node=Identity.generate().did, head=HEAD, sequence=3),
        ])
        ours = log.receipt(ours.entry_hash)  # against the latest tree head
    finally:
        log.close()
    return key, {"ours": ours.to_json(), "theirs": theirs.to_json()}


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
