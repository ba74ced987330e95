"""consent.multibase: base58btc as the reference ``base58`` package computes it, and one
spelling per value (the multibase draft, did:key)."""

from __future__ import annotations

import base58
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent import multibase


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=80) | st.binary(max_size=8).map(lambda b: b"\0" * 3 + b))
def test_round_trip_equals_reference(data: bytes) -> None:
    text = multibase.b58encode(data)
    assert text == base58.b58encode(data).decode("ascii")
    assert multibase.b58decode(text) == data
    assert multibase.decode(multibase.encode(data)) == data


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=multibase.ALPHABET, max_size=60))
def test_decode_equals_reference(text: str) -> None:
    assert multibase.b58decode(text) == base58.b58decode(text)


@pytest.mark.parametrize("text", ["0", "O", "I", "l", "ab c", " 2", "2\n", "+"])
def test_characters_outside_the_alphabet_refused(text: str) -> None:
    with pytest.raises(ValueError, match="outside the alphabet"):
        multibase.b58decode(text)


def test_multibase_needs_the_z_prefix() -> None:
    with pytest.raises(ValueError, match="start with 'z'"):
        multibase.decode("f00")
    assert multibase.encode(b"\0\1") == "z12"  # a zero byte is "1"; the value 1 is "2"
