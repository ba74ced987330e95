"""consent.timespec: the one syntax for --since / --until / durations on every command line.

Each form (ISO date, ISO date-time at each precision, with and without an offset, a duration
ago) with the range it covers and the words that say so; bad input is one sentence. The
tools' use of it is tested beside each tool (tests/agent_node/test_operator_log.py,
tests/wallet/test_wallet_timespec.py, tests/ledger/test_report.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from consent.timespec import (
    TimeSpecError,
    ceil_second,
    check_range,
    describe_range,
    parse_bound,
    parse_duration,
    since_option,
    until_option,
)

NOW = datetime(2026, 12, 4, 12, 0, 30, 250_000, tzinfo=UTC)


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(("text", "start", "end", "until_words"), [
    ("2026-12-04", at(2026, 12, 4), at(2026, 12, 5),
     "until 2026-12-04 (whole day, up to 2026-12-05T00:00Z)"),
    ("2026-12-04T09:30Z", at(2026, 12, 4, 9, 30), at(2026, 12, 4, 9, 31),
     "until 2026-12-04T09:30Z (whole minute, up to 2026-12-04T09:31Z)"),
    ("2026-12-04T09:30:15", at(2026, 12, 4, 9, 30, 15), at(2026, 12, 4, 9, 30, 16),
     "until 2026-12-04T09:30:15Z (whole second, up to 2026-12-04T09:30:16Z)"),
    ("2026-12-04T10:30:15+01:00", at(2026, 12, 4, 9, 30, 15), at(2026, 12, 4, 9, 30, 16),
     "until 2026-12-04T09:30:15Z (whole second, up to 2026-12-04T09:30:16Z)"),
    ("2026-12-04T09", at(2026, 12, 4, 9), at(2026, 12, 4, 10),
     "until 2026-12-04T09:00Z (whole hour, up to 2026-12-04T10:00Z)"),
    ("2026-12-04 09:30:15.5", at(2026, 12, 4, 9, 30, 15, 500_000),
     at(2026, 12, 4, 9, 30, 15, 500_001), "until 2026-12-04T09:30:15.500000Z (included)"),
    ("24h", at(2026, 12, 3, 12, 0, 30), at(2026, 12, 3, 12, 0, 31),
     "until 24h ago (up to 2026-12-03T12:00:31Z)"),
    ("7d", at(2026, 11, 27, 12, 0, 30), at(2026, 11, 27, 12, 0, 31),
     "until 7d ago (up to 2026-11-27T12:00:31Z)"),
    ("30m", at(2026, 12, 4, 11, 30, 30), at(2026, 12, 4, 11, 30, 31),
     "until 30m ago (up to 2026-12-04T11:30:31Z)"),
    (" 1h30m ", at(2026, 12, 4, 10, 30, 30), at(2026, 12, 4, 10, 30, 31),
     "until 1h30m ago (up to 2026-12-04T10:30:31Z)"),
])
def test_each_form_covers_what_it_says(text: str, start: datetime, end: datetime,
                                       until_words: str) -> None:
    bound = parse_bound(text, now=NOW)
    assert (bound.start, bound.end) == (start, end)
    assert bound.describe("until") == until_words


def test_since_words() -> None:
    assert parse_bound("2026-12-04").describe("since") == \
        "since 2026-12-04 (from 2026-12-04T00:00Z)"
    assert parse_bound("2026-12-04T09:30Z").describe("since") == "since 2026-12-04T09:30Z"
    assert parse_bound("24h", now=NOW).describe("since") == "since 24h ago (2026-12-03T12:00:30Z)"
    assert describe_range(None, None) == ""
    assert describe_range(parse_bound("2026-12-01"), parse_bound("2026-12-04")) == (
        "since 2026-12-01 (from 2026-12-01T00:00Z), "
        "until 2026-12-04 (whole day, up to 2026-12-05T00:00Z)")


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "2026-02-30", "2026-12-04T25:00",
                                  "2026-12-04Tnoon", "2026-12-04T09:30Zjunk", "-3h", "0h", "24",
                                  "1.5h", "04/12/2026"])
def test_bad_input_is_one_sentence(text: str) -> None:
    with pytest.raises(TimeSpecError) as caught:
        parse_bound(text, now=NOW)
    message = str(caught.value)
    assert message.startswith(f"cannot read the time {text.strip()!r}")
    assert "2026-12-04, 2026-12-04T09:30Z or 24h" in message and "\n" not in message


def test_durations() -> None:
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    for text in ("", "h", "0s", "3x"):
        with pytest.raises(TimeSpecError):
            parse_duration(text)


def test_ceil_second_makes_second_precision_comparisons_exact() -> None:
    assert ceil_second(at(2026, 1, 1, 0, 0, 0)) == at(2026, 1, 1, 0, 0, 0)
    assert ceil_second(at(2026, 1, 1, 0, 0, 0, 1)) == at(2026, 1, 1, 0, 0, 1)


def test_click_options_give_usage_errors_naming_the_option() -> None:
    @click.command()
    @since_option()
    @until_option()
    def show(since: object, until: object) -> None:
        check_range(since, until)  # type: ignore[arg-type]
        click.echo(describe_range(since, until) or "all")  # type: ignore[arg-type]

    runner = CliRunner()
    ok = runner.invoke(show, ["--until", "2026-12-04"])
    assert ok.exit_code == 0 and "whole day, up to 2026-12-05T00:00Z" in ok.output
    bad = runner.invoke(show, ["--since", "last tuesday"])
    assert bad.exit_code == 2 and "--since" in bad.output
    assert "cannot read the time 'last tuesday'" in bad.output
    backwards = runner.invoke(show, ["--since", "2026-12-05", "--until", "2026-12-04"])
    assert backwards.exit_code == 2 and "is before --since" in backwards.output
    same_day = runner.invoke(show, ["--since", "2026-12-04", "--until", "2026-12-04"])
    assert same_day.exit_code == 0


def test_the_documented_examples_hold() -> None:
    """docs/audit.md, "Dates and ranges": the report's printed range and the table's rows."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "audit.md").read_text()
    words = describe_range(parse_bound("2026-03-01"), parse_bound("2026-03-31"))
    assert f"42 event(s) ({words})" in docs
    assert "until 2026-03-31 (whole day, up to 2026-04-01T00:00Z)" in docs
    minute = parse_bound("2026-03-31T10:30+01:00")
    assert (minute.start, minute.end) == (at(2026, 3, 31, 9, 30), at(2026, 3, 31, 9, 31))
    for text in ("2026-03-31T09:30Z", "2026-03-31T09:30:15Z", "24h", "7d", "30m", "1h30m", "2w"):
        assert f"`{text}`" in docs
        parse_bound(text)
    for bad in ("yesterday", "2026-02-30", "-3h"):
        assert f"`{bad}`" in docs
        with pytest.raises(TimeSpecError):
            parse_bound(bad)
