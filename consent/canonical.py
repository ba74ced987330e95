"""RFC 8785 JSON Canonicalization Scheme (JCS).

Every signed or hashed statement in the project is serialised here, so that two parties
holding equal JSON values always hash and sign identical bytes.

Two well-kept libraries do the work: ``orjson`` serialises (sorted keys, compact, raw UTF-8,
the same string escapes as JCS), and ``rfc8785`` supplies the member order of objects whose
keys are not ASCII (JCS sorts by UTF-16 code units, ``orjson`` by code points). Floats:
``orjson`` writes the same shortest round-trip digits as JCS but places some differently
(JCS writes ECMAScript's form: ``1.0`` is ``1``, ``1e16`` is ``10000000000000000``); those
few tokens are rewritten in ``orjson``'s output by ``es_number`` (property tests check every
path against ``rfc8785``).

JCS treats every number as an IEEE 754 double (RFC 8785 §3.2.2.3), so ``1e20`` is written as
``100000000000000000000``, which a JSON parser reads back as an integer. ``rfc8785`` refuses
integers beyond 2**53; we map such integers to the double they denote when that is exact, so a
statement canonicalises to the same bytes before and after a round trip through the wire.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Any

import orjson
import rfc8785

SAFE_INTEGER = 2**53 - 1
_BARE_NUMBER = b"-0123456789"  # a top-level number: rare, take the slower path
# STRICT_INTEGER: integers beyond 2**53 (JCS writes them as doubles) take the slower path.
_ORJSON = (orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER | orjson.OPT_PASSTHROUGH_DATETIME
           | orjson.OPT_PASSTHROUGH_DATACLASS)
# orjson writes a float's shortest round-trip digits, as JCS does, and places them as JCS
# does except in three cases: an integral float ("184.0", "-0.0"; JCS "184", "0") and the
# exponent forms of 1e16..1e21 and 1e-6..1e-5 (JCS writes those without an exponent). Every
# other float token is already JCS's. These find the tokens that may differ (anything in a
# string that looks like them only costs a closer look); each is then read whole.
MAX_FLOAT_TEXT = 32  # the longest float orjson writes: -1.7976931348623157e+308 (24)
_INTEGRAL_END = re.compile(rb"\.0[,\]}]")
_EXPONENT = re.compile(rb"e[+-][0-9]")
# A float token in orjson's compact output: between ``:[,`` and ``,]}``. A match inside a
# string (say ``"a:1.5,"``) is told apart by the number of quotes before it; a time such as
# ``00:00.5Z`` does not match.
_FLOAT_TOKEN = re.compile(
    rb"[:\[,](-?[0-9]+(?:\.[0-9]+(?:[eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+))(?=[,\]}])")


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value (dicts, lists, str, int, float...).

    Raises ``ValueError`` (naming the kind of problem, never the value) for what JSON cannot
    hold exactly: NaN, infinities, inexact integers beyond 2**53, lone surrogates, non-string
    keys, and objects that are not JSON values (bytes, sets, datetimes, dataclasses...).
    A few types ``orjson`` writes natively (UUIDs, enums) come out as the JSON string or
    number they stand for, the bytes a peer gets by canonicalising the parsed value.
    """
    try:
        out = orjson.dumps(value, option=_ORJSON)
    except (TypeError, orjson.JSONEncodeError):
        out = None
    # The common case: no non-ASCII text (key order), no NaN or infinity (written as null).
    if out is not None and out.isascii() and out[:1] not in _BARE_NUMBER:
        if b"null" not in out or _reads_back(out, value):
            fast = _jcs_floats(out)
            if fast is not None:
                return fast
        elif _FLOAT_TOKEN.search(out) is None:
            # orjson writes NaN and infinities as null, which JCS refuses: the C json encoder
            # writes the same bytes here (there is no float) and raises for those.
            try:
                return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                                  sort_keys=True, allow_nan=False).encode("ascii")
            except (TypeError, ValueError):
                pass
    try:
        prepared, ascii_keys = _prepare(value)
        if ascii_keys:
            return orjson.dumps(prepared, option=orjson.OPT_SORT_KEYS)
        return rfc8785.dumps(prepared)
    except rfc8785.CanonicalizationError as exc:
        # rfc8785's messages repeat the offending value; ours name only the kind of problem.
        raise ValueError(f"value cannot be canonicalised as JSON ({type(exc).__name__})") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"value cannot be canonicalised as JSON: {type(exc).__name__}") from None


def _reads_back(out: bytes, value: Any) -> bool:
    """Whether orjson's text ``out`` of ``value`` parses back to an equal value: then each of
    its nulls is a None of ``value``, not a NaN or an infinity (which orjson also writes as
    null and JCS refuses), since neither equals None. Tuples, UUIDs and enums do not compare
    equal to what they parse back to and take the slower paths. Parsing and comparing cost
    ~7 us on a signed reply with a null in it, where the C json encoder cost ~30 us."""
    try:
        return bool(orjson.loads(out) == value)
    except Exception:  # a value whose __eq__ fails: the slower paths decide
        return False


def _jcs_floats(out: bytes) -> bytes | None:
    """orjson's ASCII output with each float token JCS writes differently rewritten in JCS's
    form (``float(token)`` is the very double: orjson wrote its shortest round-trip digits).
    A token is inside a string when an odd number of quotes precede it. None (the slower
    path) when the text holds an escaped quote, where that count would not tell, or when a
    place that looked like a token outside a string is not one."""
    hits = [m.start() for m in _INTEGRAL_END.finditer(out)]
    if _EXPONENT.search(out) is not None:
        hits = sorted(hits + [m.start() for m in _EXPONENT.finditer(out)])
    if not hits:
        return out
    if b'\\"' in out:
        return None
    parts: list[bytes] = []
    copied = counted = quotes = 0
    for hit in hits:
        if hit < copied:
            continue  # a second mark in a token already rewritten
        quotes += out.count(b'"', counted, hit)
        counted = hit
        if quotes & 1:
            continue  # inside a string
        # The token starts after the last ``:[,`` before the mark, within MAX_FLOAT_TEXT.
        low = max(0, hit - MAX_FLOAT_TEXT)
        match = _FLOAT_TOKEN.match(out, max(out.rfind(b":", low, hit),
                                            out.rfind(b"[", low, hit), out.rfind(b",", low, hit)))
        if match is None or not match.start(1) <= hit < match.end(1):
            return None
        parts += (out[copied:match.start(1)], _jcs_number(float(match[1])))
        copied = counted = match.end(1)
    if not parts:
        return out
    parts.append(out[copied:])
    return b"".join(parts)


@functools.lru_cache(maxsize=4096)
def _jcs_number(value: float) -> bytes:
    return es_number(value).encode("ascii")


def _prepare(value: Any) -> tuple[Any, bool]:
    """``value`` with every number in its JCS form (floats as pre-serialised fragments,
    exact integers beyond 2**53 as doubles), and whether every object key is ASCII."""
    ascii_keys = True

    def walk(item: Any) -> Any:
        nonlocal ascii_keys
        if item is None or isinstance(item, str | bool):
            return item
        if isinstance(item, float):
            return _number(item)
        if isinstance(item, int):
            return item if abs(item) <= SAFE_INTEGER else _number(_as_double(item))
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    raise TypeError("object keys must be strings")
                ascii_keys = ascii_keys and key.isascii()
            return {key: walk(child) for key, child in item.items()}
        if isinstance(item, list | tuple):
            return [walk(child) for child in item]
        raise TypeError(f"{type(item).__name__} is not a JSON value")

    prepared = walk(value)
    return (prepared if ascii_keys else _as_ieee(value)), ascii_keys


def _number(value: float) -> orjson.Fragment:
    return orjson.Fragment(es_number(value).encode("ascii"))


def es_number(value: float) -> str:
    """ECMAScript's Number::toString of a double (ECMA-262 §6.1.6.1.20), which RFC 8785
    §3.2.2.3 prescribes: the shortest round-trip digits (``repr`` gives the same), placed by
    ECMAScript's rules for where a decimal point or an exponent goes."""
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("NaN and infinities are not JSON numbers")
    if value == 0:
        return "0"  # also -0
    if 1e-4 <= abs(value) < 1e16:  # repr writes no exponent here: ECMAScript's form but "x.0"
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction.rstrip("0")).lstrip("0")
    # value = 0.digits * 10**n
    n = len(whole) + int(exponent or 0) - (len(whole + fraction.rstrip("0")) - len(digits))
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return f"{sign}{digits[:n]}.{digits[n:]}"
    if -6 < n <= 0:
        return f"{sign}0.{'0' * -n}{digits}"
    e = f"e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return f"{sign}{digits}{e}" if k == 1 else f"{sign}{digits[0]}.{digits[1:]}{e}"


def _as_double(value: int) -> float:
    as_float = float(value)  # OverflowError beyond the double range
    if int(as_float) != value:
        raise ValueError(
            "an integer beyond 2**53 cannot be represented exactly in JSON: send it as a string")
    return as_float


def _as_ieee(value: Any) -> Any:
    """For ``rfc8785`` (non-ASCII keys): exact integers beyond 2**53 as doubles."""
    if isinstance(value, dict):
        return {key: _as_ieee(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_as_ieee(item) for item in value]
    if type(value) is int and abs(value) > SAFE_INTEGER:
        return _as_double(value)
    return value


def canonical_sha256(value: Any) -> str:
    """Hex SHA-256 of the canonical form: the digest the ledger records for a statement."""
    return hashlib.sha256(canonicalize(value)).hexdigest()
