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
import json
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


def _plain(value: Any) -> bool:
    """True when compact, key-sorted ``json.dumps(ensure_ascii=False)`` already is RFC 8785:
    null, booleans, safe integers, strings (JCS escapes exactly what ``json`` escapes, in the
    same lowercase ``\\u00xx`` form) and lists / objects of those whose keys are ASCII (so
    code-point order is UTF-16 order). Numbers with a fraction or exponent are not plain."""
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return True
    if kind is int:
        return abs(value) <= SAFE_INTEGER
    if kind is list:
        return all(_plain(item) for item in value)
    if kind is dict:
        return all(type(key) is str and key.isascii() and _plain(item)
                   for key, item in value.items())
    return False


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value (dicts, lists, str, int, float...).

    Values without floats and with ASCII keys (nearly every statement in this project) take
    the C ``json`` encoder, which gives identical bytes for them (a property test checks it
    against ``rfc8785``); everything else takes the ``rfc8785`` library.
    """
    if _plain(value):
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                              sort_keys=True).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: not valid Unicode, refused below too
            pass
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
