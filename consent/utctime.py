"""The one way a time is written in this project's records and messages (grants, access
events, stores, ledger entries, training plans): UTC, ISO 8601, ``Z``. Command-line *input*
of times is consent.timespec's."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_text(moment: datetime, *, micro: bool = False) -> str:
    """The one way a time is written in this project's records and messages: UTC, ISO 8601,
    ``Z``: ``2026-12-04T09:30:15Z`` (to the second, as credentials and log entries state
    times), or with ``micro`` ``2026-12-04T09:30:15.250000Z`` (fixed width, so stored texts
    sort as the times do)."""
    moment = moment.astimezone(UTC)
    if micro:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str) -> datetime:
    """A time :func:`utc_text` wrote (or any ISO 8601 date-time with an offset)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


__all__ = ["parse_utc", "utc_text"]
