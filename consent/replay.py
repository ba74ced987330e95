"""Replay protection for sealed requests: a nonce seen once, within a bounded time window.

A request older or newer than ``window`` is refused outright, so the set of remembered nonces
only needs to cover the window and stays bounded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from consent.errors import ReplayError


class ReplayGuard:
    """Thread-safe memory of (nonce -> time) for the last ``window``."""

    def __init__(self, window: timedelta = timedelta(minutes=5), max_entries: int = 1_000_000):
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[str, datetime] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, nonce: str, timestamp: datetime, now: datetime | None = None) -> None:
        """Accept a (nonce, timestamp) once; raise ``ReplayError`` otherwise."""
        now = now or datetime.now(UTC)
        if not nonce or len(nonce) > 128:
            raise ReplayError("the request nonce must be 1 to 128 characters")
        if timestamp.tzinfo is None or now.tzinfo is None:
            raise ReplayError("request and clock times must carry a time zone (use UTC)")
        if abs(now - timestamp) > self.window:
            raise ReplayError(
                "the request timestamp is outside the accepted window: check the clock and resend"
            )
        with self._lock:
            self._expire(now)
            if nonce in self._seen:
                raise ReplayError("this request was already received (replayed nonce)")
            if len(self._seen) >= self.max_entries:
                raise ReplayError("too many requests in the replay window: retry shortly")
            self._seen[nonce] = now

    def _expire(self, now: datetime) -> None:
        horizon = now - 2 * self.window
        while self._seen:
            oldest_nonce, seen_at = next(iter(self._seen.items()))
            if seen_at >= horizon:
                break
            del self._seen[oldest_nonce]
