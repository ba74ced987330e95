"""The fast canonical encoding of validated events equals RFC 8785 (the rfc8785 library)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from consent.canonical import canonicalize
from ledger.events import encode_event

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
