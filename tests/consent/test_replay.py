"""Replay protection (``consent.replay.ReplayGuard``): each nonce once, timestamps inside a
bounded window (±``window`` around the node's clock), time-zone-aware times only.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent.errors import ReplayError
from consent.replay import ReplayGuard

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=5)
TICK = timedelta(microseconds=1)


def test_fresh_nonce_accepted_once() -> None:
    guard = ReplayGuard(WINDOW)
    guard.check("n-1", NOW, now=NOW)
    with pytest.raises(ReplayError, match="already received"):
        guard.check("n-1", NOW, now=NOW)
    guard.check("n-2", NOW, now=NOW)  # another nonce is fine


def test_duplicate_with_new_timestamp_still_refused() -> None:
    guard = ReplayGuard(WINDOW)
    guard.check("n-1", NOW, now=NOW)
    later = NOW + timedelta(minutes=1)
    with pytest.raises(ReplayError, match="already received"):
        guard.check("n-1", later, now=later)


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [
        (-WINDOW, True),
        (-WINDOW - TICK, False),
        (WINDOW, True),
        (WINDOW + TICK, False),
        (timedelta(0), True),
        (-timedelta(days=365), False),
        (timedelta(days=1), False),
    ],
    ids=["oldest-edge", "just-too-old", "newest-edge", "just-too-new", "now", "a-year-old",
         "tomorrow"],
)
def test_window_edges(offset: timedelta, accepted: bool) -> None:
    guard = ReplayGuard(WINDOW)
    if accepted:
        guard.check("n", NOW + offset, now=NOW)
        with pytest.raises(ReplayError):
            guard.check("n", NOW + offset, now=NOW)
    else:
        with pytest.raises(ReplayError, match="outside the accepted window"):
            guard.check("n", NOW + offset, now=NOW)
        guard.check("n", NOW, now=NOW)  # a refused request does not burn its nonce


def test_other_time_zone_is_the_same_instant() -> None:
    guard = ReplayGuard(WINDOW)
    beijing = NOW.astimezone(timezone(timedelta(hours=8)))
    guard.check("n", beijing, now=NOW)
    with pytest.raises(ReplayError, match="already received"):
        guard.check("n", NOW, now=NOW)


def test_naive_timestamp_refused() -> None:
    guard = ReplayGuard(WINDOW)
    with pytest.raises(ReplayError, match="time zone"):
        guard.check("n", NOW.replace(tzinfo=None), now=NOW)


def test_naive_now_refused() -> None:
    # A caller passing datetime.now() (naive) must get a ReplayError that names the problem,
    # not a TypeError from comparing naive and aware times.
    guard = ReplayGuard(WINDOW)
    with pytest.raises(ReplayError):
        guard.check("n", NOW, now=NOW.replace(tzinfo=None))


def test_default_now_is_the_clock() -> None:
    guard = ReplayGuard(WINDOW)
    guard.check("n", datetime.now(UTC))
    with pytest.raises(ReplayError, match="outside"):
        guard.check("m", datetime.now(UTC) - 2 * WINDOW)


@pytest.mark.parametrize(("nonce", "ok"), [("", False), ("x" * 128, True), ("x" * 129, False)],
                         ids=["empty", "128-chars", "129-chars"])
def test_nonce_length(nonce: str, ok: bool) -> None:
    guard = ReplayGuard(WINDOW)
    if ok:
        guard.check(nonce, NOW, now=NOW)
    else:
        with pytest.raises(ReplayError, match="1 to 128"):
            guard.check(nonce, NOW, now=NOW)


@settings(max_examples=200, deadline=None)
@given(
    sent=st.timedeltas(min_value=-WINDOW, max_value=WINDOW),
    delay=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=2)),
)
def test_exact_replay_always_refused(sent: timedelta, delay: timedelta) -> None:
    # Whatever the node forgets to stay bounded, a byte-identical replay (same nonce, same
    # timestamp) is refused at any later time: as a duplicate or as too old.
    guard = ReplayGuard(WINDOW)
    guard.check("n", NOW + sent, now=NOW)
    with pytest.raises(ReplayError):
        guard.check("n", NOW + sent, now=NOW + delay)


def test_memory_is_bounded_and_expires() -> None:
    guard = ReplayGuard(WINDOW, max_entries=3)
    for i in range(3):
        guard.check(f"n{i}", NOW, now=NOW)
    with pytest.raises(ReplayError, match="too many"):
        guard.check("n3", NOW, now=NOW)
    later = NOW + 2 * WINDOW + TICK  # the first three are past any acceptable timestamp now
    guard.check("n3", later, now=later)
    guard.check("n4", later, now=later)


def test_concurrent_duplicates_accept_exactly_one() -> None:
    guard = ReplayGuard(WINDOW)
    outcomes: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def attempt() -> None:
        start.wait()
        try:
            guard.check("same", NOW, now=NOW)
            ok = True
        except ReplayError:
            ok = False
        with lock:
            outcomes.append(ok)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [False] * 7 + [True]
