"""Durations, times, purposes, scopes and requester DIDs as the wallet reads them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from consent.identity import Identity
from wallet.errors import (
    InvalidDuration,
    InvalidPurpose,
    InvalidRequester,
    InvalidScope,
    TTLTooLong,
)
from wallet.parsing import (
    check_purpose,
    check_requester,
    check_scopes,
    check_ttl,
    format_duration,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("90m", timedelta(minutes=90)),
        ("3d", timedelta(days=3)),
        ("1h30m", timedelta(minutes=90)),
        (" 2H ", timedelta(hours=2)),
        ("45s", timedelta(seconds=45)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "24", "h", "24x", "-3h", "1.5h", "0h", "tomorrow"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(InvalidDuration):
        parse_duration(text)


def test_ttl_limit_is_72_hours() -> None:
    assert check_ttl(timedelta(hours=72)) == timedelta(hours=72)
    with pytest.raises(TTLTooLong, match="at most 72 hours"):
        check_ttl(parse_duration("73h"))
    with pytest.raises(TTLTooLong, match="at most 24 hours"):
        check_ttl(timedelta(hours=25), timedelta(hours=24))


def test_unknown_purpose_suggests_the_closest() -> None:
    assert check_purpose("quote-generation") == "quote-generation"
    with pytest.raises(InvalidPurpose, match="did you mean 'quote-generation'"):
        check_purpose("quote-generaton")
    with pytest.raises(InvalidPurpose, match=r"known purposes are .*churn-analysis"):
        check_purpose("xyzzy")


def test_scopes() -> None:
    assert check_scopes(["transaction", "identity", "transaction"]) == ["transaction", "identity"]
    with pytest.raises(InvalidScope, match="use one of identity, transaction, sentiment"):
        check_scopes(["everything"])
    with pytest.raises(InvalidScope, match="at least one"):
        check_scopes([])


def test_requester_must_be_ed25519_did_key() -> None:
    did = Identity.generate().did
    assert check_requester(did) == did
    with pytest.raises(InvalidRequester, match="not a valid did:key"):
        check_requester("did:web:example.com")
    with pytest.raises(InvalidRequester, match="not a valid did:key"):
        check_requester(did[:-3])


def test_format_duration() -> None:
    assert format_duration(timedelta(days=2, hours=3, minutes=4)) == "2d 3h 4m"
    assert format_duration(timedelta(seconds=30)) == "<1m"
    assert format_duration(timedelta(seconds=-5)) == "0m"


def test_access_log_names_only_your_own_grants() -> None:
    # Another customer's grant id is theirs: the wallet shows only a count of them. Events
    # now carry your proven grants and a count; older ones listed every id.
    from wallet.cli import _grants_line
    from wallet.service import grants_used

    v2 = {"v": 2, "grant_count": 3, "own_grants": ["urn:uuid:b"]}
    v1 = {"grant_ids": ["urn:uuid:a", "urn:uuid:b", "urn:uuid:c"]}
    for event in (v2, v1):
        assert grants_used(event, {"urn:uuid:b"}) == (["urn:uuid:b"], 2)
        line = _grants_line(*grants_used(event, {"urn:uuid:b"}))
        assert line == "under your grant urn:uuid:b (+2 other customers' grants)"
        assert "urn:uuid:a" not in line and "urn:uuid:c" not in line
    assert _grants_line(*grants_used({"grant_ids": ["urn:uuid:a"]}, set())) == (
        "under none of your grants (+1 other customers' grants)")
    assert grants_used({"grant_count": 0, "own_grants": []}, set()) == ([], 0)
