"""One syntax for times and durations on every command line (``--since``, ``--until``,
``--ttl``): ``sov-audit``, ``sov-node`` and ``consent-wallet`` all read them here.

A time is one of

- an ISO 8601 date, ``2026-12-04``: the UTC day;
- an ISO 8601 date-time, ``2026-12-04T09:30Z``, ``2026-12-04T09:30:15+01:00``; without an
  offset it is UTC;
- a duration meaning "that long ago": ``24h``, ``7d``, ``30m``, ``1h30m``, ``2w``, ``45s``.

``--since`` starts at the moment given (a day: at its first second). ``--until`` includes the
whole unit written: a day includes the whole day (``until 2026-12-04`` ends at
``2026-12-05T00:00Z``, exclusive), a date-time to the minute includes that minute, to the
second that second; a duration ends with the second it names. Every bound says so in words
(:meth:`TimeBound.describe`), so a report or a listing states exactly what it covers.

Bad input raises :class:`TimeSpecError` (one sentence); the click parameter type :data:`TIME`
(``since_option`` / ``until_option``) turns it into a usage error naming the option (exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import click

from consent.errors import ConsentError
from consent.utctime import utc_text

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# What follows the date in an ISO date-time: its precision decides what --until includes.
_CLOCK = re.compile(
    r"[T ](?P<h>\d{2})(?::?(?P<m>\d{2}))?(?::?(?P<s>\d{2}))?(?P<f>[.,]\d+)?"
    r"(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?"
)
_UNIT_NAMES = {timedelta(hours=1): "hour", timedelta(minutes=1): "minute",
               timedelta(seconds=1): "second"}
EXAMPLES = "2026-12-04, 2026-12-04T09:30Z or 24h (24 hours ago)"


class TimeSpecError(ConsentError, ValueError):
    """A time or duration given on the command line cannot be read."""


def parse_duration(text: str) -> timedelta:
    """``24h`` / ``90m`` / ``3d`` / ``1h30m`` / ``2w`` -> timedelta (more than zero)."""
    cleaned = text.strip().lower().replace(" ", "")
    if not cleaned or _PART.sub("", cleaned):
        raise TimeSpecError(
            f"cannot read the duration {text!r}: use a number and a unit, like 24h, 90m or 3d"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(cleaned))
    if seconds <= 0:
        raise TimeSpecError("a duration must be longer than zero, like 24h")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class TimeBound:
    """A time as written (``text``) and what it covers: from ``start`` (inclusive) to
    ``end`` (exclusive); ``whole_day`` when it was written as a date."""

    text: str
    start: datetime
    end: datetime
    whole_day: bool = False
    relative: bool = False

    def describe(self, role: str) -> str:
        """``since``/``until`` in words, e.g. ``until 2026-12-04 (whole day, up to
        2026-12-05T00:00Z)``."""
        if role == "since":
            if self.whole_day:
                return f"since {self.text} (from {stamp(self.start)})"
            if self.relative:
                return f"since {self.text} ago ({stamp(self.start)})"
            return f"since {stamp(self.start)}"
        if self.whole_day:
            return f"until {self.text} (whole day, up to {stamp(self.end)})"
        if self.relative:
            return f"until {self.text} ago (up to {stamp(self.end)})"
        unit = _UNIT_NAMES.get(self.end - self.start)
        if unit is None:
            return f"until {stamp(self.start)} (included)"
        return f"until {stamp(self.start)} (whole {unit}, up to {stamp(self.end)})"


def stamp(moment: datetime) -> str:
    """A UTC time as short as it can be written exactly: ``2026-12-05T00:00Z``,
    ``2026-12-05T09:30:15Z``, ``2026-12-05T09:30:15.250000Z``."""
    moment = moment.astimezone(UTC)
    if moment.microsecond or moment.second:
        return utc_text(moment, micro=bool(moment.microsecond))
    # The one shorter form, for whole minutes: an input echoed back as it was typed.
    return utc_text(moment)[:-4] + "Z"


def parse_bound(text: str, *, now: datetime | None = None) -> TimeBound:
    """Read a date, a date-time or a duration ago (see the module docstring)."""
    cleaned = text.strip()
    if _DATE.fullmatch(cleaned):
        try:
            day = date.fromisoformat(cleaned)
        except ValueError:
            raise _unreadable(text) from None
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return TimeBound(cleaned, start, start + timedelta(days=1), whole_day=True)
    clock = _CLOCK.fullmatch(cleaned[10:]) if _DATE.match(cleaned) else None
    if clock is not None:
        try:
            moment = datetime.fromisoformat(cleaned.replace(",", "."))
        except ValueError:
            raise _unreadable(text) from None
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        return TimeBound(cleaned, moment, moment + _precision(clock))
    try:
        ago = parse_duration(cleaned)
    except TimeSpecError:
        raise _unreadable(text) from None
    # To the second: "24h" names the second 24 hours ago, as the listings print times.
    second = ((now or datetime.now(UTC)) - ago).replace(microsecond=0)
    return TimeBound(cleaned, second, second + timedelta(seconds=1), relative=True)


def _precision(clock: re.Match[str]) -> timedelta:
    if clock["f"]:
        return timedelta(microseconds=1)
    if clock["s"]:
        return timedelta(seconds=1)
    if clock["m"]:
        return timedelta(minutes=1)
    return timedelta(hours=1)


def _unreadable(text: str) -> TimeSpecError:
    return TimeSpecError(f"cannot read the time {text!r}: use a date, a date-time or a "
                         f"duration ago, like {EXAMPLES}")


def check_range(since: TimeBound | None, until: TimeBound | None) -> None:
    """Refuse, as a usage error (exit 2), a range that can hold nothing: ``--until`` before
    ``--since``."""
    if since is not None and until is not None and until.end <= since.start:
        raise click.UsageError(f"--until ({until.text}) is before --since ({since.text}): "
                               "swap them or widen the range")


def describe_range(since: TimeBound | None, until: TimeBound | None) -> str:
    """The range in words, e.g. ``since 2026-12-01 (from …), until 2026-12-04 (whole day …)``;
    empty when neither is given."""
    parts = [b.describe(role) for b, role in ((since, "since"), (until, "until")) if b]
    return ", ".join(parts)


def ceil_second(moment: datetime) -> datetime:
    """The first whole second at or after ``moment``. Logs that store times to the second
    compare as ``t >= ceil(start)`` and ``t < ceil(end)``, exactly ``start <= t < end``."""
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        return moment.replace(microsecond=0) + timedelta(seconds=1)
    return moment


class TimeBoundType(click.ParamType):
    """A click parameter type for ``--since`` / ``--until`` (bad input: exit 2, one
    sentence naming the option)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> TimeBound:
        if isinstance(value, TimeBound):
            return value
        try:
            return parse_bound(str(value))
        except TimeSpecError as exc:
            self.fail(str(exc), param, ctx)


TIME = TimeBoundType()
SINCE_HELP = f"Only what happened at or after this time: {EXAMPLES}."
UNTIL_HELP = ("Only what happened up to this time; a date includes the whole day: "
              f"{EXAMPLES}.")


def since_option(help_text: str = SINCE_HELP) -> Any:
    return click.option("--since", type=TIME, default=None, help=help_text)


def until_option(help_text: str = UNTIL_HELP) -> Any:
    return click.option("--until", type=TIME, default=None, help=help_text)


__all__ = [
    "TIME", "TimeBound", "TimeBoundType", "TimeSpecError", "ceil_second", "check_range",
    "describe_range", "parse_bound", "parse_duration", "since_option", "stamp", "until_option",
]
