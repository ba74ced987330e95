"""RFC 8785 JSON Canonicalization Scheme (JCS), via the maintained ``rfc8785`` library.

Every signed or hashed statement in the project is serialised here, so that two parties
holding equal JSON values always hash and sign identical bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value (dicts, lists, str, int, float...)."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise ValueError(f"value cannot be canonicalised as JSON: {exc}") from exc


def canonical_sha256(value: Any) -> str:
    """Hex SHA-256 of the canonical form: the digest the ledger records for a statement."""
    return hashlib.sha256(canonicalize(value)).hexdigest()
