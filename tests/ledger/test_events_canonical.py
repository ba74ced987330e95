"""The fast canonical encoding of validated events equals RFC 8785 (the rfc8785 library)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from consent.canonical import canonicalize
from consent.utctime import utc_text
from ledger.events import SCHEMAS, EventError, encode_event, format_time, validate_event

HEX = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
TOKEN = st.from_regex(r"[a-z0-9][a-z0-9._:-]{0,20}", fullmatch=True)
DID = st.from_regex(r"did:key:z6Mk[1-9A-HJ-NP-Za-km-z]{44}", fullmatch=True)
TIME = st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")).filter(
    lambda t: len(t) == 20
)

# An access head's summary rows (ledger.events.ACCESS_ROW): nested objects sort too.
ROW = st.fixed_dictionaries(
    {"outcome": TOKEN, "count": st.integers(min_value=0, max_value=2**53 - 1)},
    optional={"requester": DID, "purpose": TOKEN, "scopes": st.lists(TOKEN, max_size=3),
              "reason": TOKEN},
)


@settings(max_examples=300, deadline=None)
@given(
    node=DID,
    head=HEX,
    sequence=st.integers(min_value=0, max_value=2**53 - 1),
    purpose=TOKEN,
    commitments=st.lists(HEX, max_size=4),
    accesses=st.lists(ROW, max_size=4),
    time=TIME,
)
def test_fast_encoding_is_rfc8785(node, head, sequence, purpose, commitments, accesses,
                                  time) -> None:
    event = {
        "type": "access_head",
        "schema_version": 1,
        "time": time,
        "node": node,
        "head": head,
        "sequence": sequence,
        "purpose": purpose,
        "subject_commitments": commitments,
        "accesses": accesses,
    }
    assert encode_event(event) == canonicalize(event)


SIGNATURE = st.text(alphabet="0123456789abcdef", min_size=128, max_size=128)
COUNT = st.integers(min_value=0, max_value=2**53 - 1)
# One strategy per field check in ledger.events (by the check's description).
FIELD_VALUES = {
    "a lowercase hex SHA-256 digest (64 characters)": HEX,
    "a did:key of an organisation's service (requester or node)": DID,
    "a short lowercase token (letters, digits, . _ : -)": TOKEN,
    "an RFC 3339 UTC time such as 2026-01-31T12:00:00Z": TIME,
    "a non-negative integer": COUNT,
    "a list of hex SHA-256 digests": st.lists(HEX, max_size=4),
    "a list of short lowercase tokens": st.lists(TOKEN, max_size=4),
    "a list of service did:keys": st.lists(DID, max_size=3),
    "an Ed25519 signature as 128 lowercase hex digits": SIGNATURE,
}


def _value(description: str) -> st.SearchStrategy:
    if description.startswith("a list of at most"):  # an access head's summary rows
        return st.lists(ROW, max_size=3)
    return FIELD_VALUES[description]


@st.composite
def any_event(draw: Any) -> dict:
    """Any valid event of any type, optional and authority fields drawn or left out."""
    kind = draw(st.sampled_from(sorted(SCHEMAS)))
    required, optional = SCHEMAS[kind]
    optional = {**optional, "author": (None, DID_TEXT),
                "signature": (None, SIG_TEXT),
                "endorser": (None, DID_TEXT),
                "endorsement": (None, SIG_TEXT)}
    event = {"type": kind, "schema_version": 1, "time": draw(TIME)}
    for name, (_, description) in required.items():
        event[name] = draw(_value(description))
    for name, (_, description) in optional.items():
        if draw(st.booleans()):
            event[name] = draw(_value(description))
    order = draw(st.permutations(list(event)))  # insertion order must not matter
    return {name: event[name] for name in order}


DID_TEXT = "a did:key of an organisation's service (requester or node)"
SIG_TEXT = "an Ed25519 signature as 128 lowercase hex digits"


@settings(max_examples=200, deadline=None)
@given(event=any_event())
def test_schema_encoder_is_rfc8785_for_every_event_type(event: dict) -> None:
    validate_event(event)  # the strategy draws only valid events
    assert encode_event(event) == rfc8785.dumps(event)


def test_json_true_is_not_schema_version_1() -> None:
    event = {"type": "erasure", "schema_version": True, "time": "2026-01-31T12:00:00Z",
             "proof_digest": "a" * 64, "subject_commitment": "b" * 64,
             "node": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"}
    with pytest.raises(EventError, match="schema_version"):
        encode_event(event)


def test_event_times_are_the_projects_one_time_format() -> None:
    """ledger.events writes times through consent.utctime (issue 16: one time-format helper):
    an aware time in another zone comes out as the same UTC text, a naive one is refused."""
    moment = datetime(2026, 12, 4, 10, 30, 15, 250000, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(moment) == utc_text(moment) == "2026-12-04T08:30:15Z"
    with pytest.raises(EventError, match="timezone-aware"):
        format_time(datetime(2026, 12, 4, 10, 30))


def test_no_module_writes_the_iso_time_format_itself() -> None:
    """Only consent/utctime.py spells the ISO 8601 strftime pattern; a copy elsewhere is how
    the four diverging time formats of issue 16 came about."""
    root = Path(__file__).resolve().parents[2]
    copies = [str(path.relative_to(root))
              for package in ("consent", "ledger", "agent_node", "fl", "coordinator", "wallet")
              for path in (root / package).rglob("*.py")
              if "%Y-%m-%dT%H:%M" in path.read_text()
              and path != root / "consent" / "utctime.py"]
    assert copies == []
