"""Multibase base58btc (the IETF multibase draft, prefix ``z``; Bitcoin's base58 alphabet),
the text form of did:key identifiers and of Data Integrity ``proofValue`` signatures.

The codec converts through one Python integer, two digits (58**2 values) per step: signing
and verifying a statement each encode or decode one, on every query, and this is 3-5 times
the speed of the pure-Python ``base58`` package, against which a property test checks it.
"""

from __future__ import annotations

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]  # index 58 * high + low
_PAIR_VALUES = {pair: value for value, pair in enumerate(_PAIRS)}
_DIGIT_VALUES = {digit: value for value, digit in enumerate(ALPHABET)}
_BASE2 = 58 * 58


def b58encode(data: bytes) -> str:
    """base58btc of ``data``: each leading zero byte becomes a ``1``."""
    number = int.from_bytes(data, "big")
    pairs = []
    while number:
        number, low = divmod(number, _BASE2)
        pairs.append(_PAIRS[low])
    text = "".join(reversed(pairs)).lstrip("1")
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + text


def b58decode(text: str) -> bytes:
    """The bytes of base58btc ``text``; ``ValueError`` for any character outside the
    alphabet (whitespace included: one value has exactly one spelling)."""
    odd = len(text) % 2
    try:
        number = _DIGIT_VALUES[text[0]] if odd else 0
        for at in range(odd, len(text), 2):
            number = number * _BASE2 + _PAIR_VALUES[text[at:at + 2]]
    except KeyError:
        raise ValueError("not base58btc: a character is outside the alphabet") from None
    zeros = len(text) - len(text.lstrip("1"))
    return b"\0" * zeros + number.to_bytes((number.bit_length() + 7) // 8, "big")


def encode(data: bytes) -> str:
    """Multibase base58btc: ``z`` + base58btc(data)."""
    return "z" + b58encode(data)


def decode(value: str) -> bytes:
    """The bytes of a multibase base58btc value; ``ValueError`` if it is not one."""
    if not value.startswith("z"):
        raise ValueError("multibase value must use base58btc (start with 'z')")
    return b58decode(value[1:])
