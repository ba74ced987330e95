"""RFC 8785 JSON Canonicalization Scheme (JCS), via the maintained ``rfc8785`` library.

Every signed or hashed statement in the project is serialised here, so that two parties
holding equal JSON values always hash and sign identical bytes.

JCS treats every number as an IEEE 754 double (RFC 8785 §3.2.2.3), so ``1e20`` is written as
``100000000000000000000``, which a JSON parser reads back as an integer. ``rfc8785`` refuses
integers beyond 2**53; we map such integers to the double they denote when that is exact, so a
statement canonicalises to the same bytes before and after a round trip through the wire.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

SAFE_INTEGER = 2**53 - 1


def _as_ieee(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _as_ieee(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_as_ieee(item) for item in value]
    if type(value) is int and abs(value) > SAFE_INTEGER:
        try:
            as_float = float(value)
        except OverflowError:
            raise ValueError("a number is too large for an IEEE 754 double") from None
        if int(as_float) != value:
            raise ValueError(
                "an integer beyond 2**53 cannot be represented exactly in JSON: send it as a string"
            )
        return as_float
    return value


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value (dicts, lists, str, int, float...)."""
    try:
        return rfc8785.dumps(_as_ieee(value))
    except rfc8785.CanonicalizationError as exc:
        # rfc8785's messages repeat the offending value; ours name only the kind of problem.
        raise ValueError(f"value cannot be canonicalised as JSON ({type(exc).__name__})") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"value cannot be canonicalised as JSON: {type(exc).__name__}") from None


def canonical_sha256(value: Any) -> str:
    """Hex SHA-256 of the canonical form: the digest the ledger records for a statement."""
    return hashlib.sha256(canonicalize(value)).hexdigest()
