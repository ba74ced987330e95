"""``consent-wallet access-log --since/--until`` read times as every tool does
(consent.timespec): a day, a date-time, a duration ago; a day as --until is the whole day and
the listing says so. Runs on a local store: no grant is delivered, so no node is asked and
the cached events are what is listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.wallet.wallet_helpers import PASSPHRASE, WalletCLI, assert_clean_error
from wallet.service import Wallet
from wallet.store import AccessRecord, from_iso

NODE_ADDRESS = "127.0.0.1:9"
TIMES = ["2020-03-30T23:59:59Z", "2020-03-31T00:00:00Z", "2020-03-31T23:59:59Z",
         "2020-04-01T00:00:00Z"]


@pytest.fixture
def cached(initialised: WalletCLI, home: Path) -> WalletCLI:
    with Wallet.open(home, PASSPHRASE) as wallet:
        wallet.store.put_access_events(NODE_ADDRESS, [
            AccessRecord(NODE_ADDRESS, seq, from_iso(time),
                         {"seq": seq, "time": time, "purpose": "quote-generation",
                          "outcome": "answered"}, verified=True, ledger_verified=None)
            for seq, time in enumerate(TIMES, start=1)])
    return initialised


def _seqs(wallet: WalletCLI, *args: str) -> list[int]:
    listed = json.loads(wallet.ok("access-log", *args, "--json").output)
    return [e["seq"] for e in listed["events"]]


def test_access_log_since_until(cached: WalletCLI) -> None:
    assert _seqs(cached) == [1, 2, 3, 4]
    assert _seqs(cached, "--since", "2020-03-31", "--until", "2020-03-31") == [2, 3]
    assert _seqs(cached, "--until", "2020-03-31T00:00:00Z") == [1, 2]
    assert _seqs(cached, "--since", "2020-03-31T23:59Z") == [3, 4]
    assert _seqs(cached, "--since", "1h") == [] and _seqs(cached, "--until", "1h") == [1, 2, 3, 4]
    human = cached.ok("access-log", "--until", "2020-03-31").output
    assert "Events until 2020-03-31 (whole day, up to 2020-04-01T00:00Z):" in human
    listed = json.loads(cached.ok("access-log", "--until", "2020-03-31", "--json").output)
    assert listed["selection"] == "until 2020-03-31 (whole day, up to 2020-04-01T00:00Z)"


@pytest.mark.parametrize(("args", "fragment"), [
    (("--since", "yesterday"), "cannot read the time 'yesterday'"),
    (("--until", "2026-02-30"), "cannot read the time '2026-02-30'"),
    (("--since", "2020-04-02", "--until", "2020-04-01"), "is before --since"),
])
def test_bad_times_are_usage_errors(cached: WalletCLI, args: tuple[str, ...],
                                    fragment: str) -> None:
    assert_clean_error(cached("access-log", *args), fragment, exit_code=2)
