"""Ledger events: the statements the log records, as RFC 8785 canonical JSON.

Every event has ``type`` (grant, revocation, access_head, model, erasure, relay),
``schema_version`` (1) and ``time`` (RFC 3339, UTC). Each type has a closed set of fields;
anything else is refused, so personal data cannot ride along in an unexpected field.

Privacy decision (GDPR Art. 4(1), Recital 26): a customer's DID is a pseudonymous identifier,
i.e. still personal data, and the log is append-only, so it can never be erased from it.
The log therefore never holds a subject's DID, only a *salted commitment* to it:
``subject_commitment = SHA-256("sovereign-fabric/subject/v1" || salt || did)`` where the
32-byte salt is random per subject and kept by the subject's wallet and the nodes that serve
them. Without the salt nobody can test guessed DIDs against the log; destroying the salt on
erasure leaves only unlinkable hashes behind. Statements (grants, proofs, models) enter the
log as digests. Requester and node DIDs are organisations' service keys, recorded in clear
because an audit must name who accessed data.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from consent.utctime import utc_text
from ledger.errors import EventError

SCHEMA_VERSION = 1
SUBJECT_COMMITMENT_DOMAIN = b"sovereign-fabric/subject/v1"
EVENT_TYPES = ("grant", "revocation", "access_head", "model", "erasure", "relay")
MAX_EVENT_BYTES = 16 * 1024

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DID = re.compile(r"did:key:z[1-9A-HJ-NP-Za-km-z]{20,100}")
_TOKEN = re.compile(r"[a-z0-9][a-z0-9._:-]{0,79}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_SIGNATURE = re.compile(r"[0-9a-f]{128}")


def subject_commitment(did: str, salt: bytes) -> str:
    """The salted commitment that stands for a subject in the log (hex SHA-256)."""
    if len(salt) != 32:
        raise EventError("a subject salt must be 32 random bytes")
    return hashlib.sha256(SUBJECT_COMMITMENT_DOMAIN + salt + did.encode()).hexdigest()


SUBJECT_EVENT_DOMAIN = b"sovereign-fabric/subject-event/v1"


def subject_event_tag(did: str, salt: bytes, sequence: int) -> str:
    """The tag that stands for "the access event ``sequence`` touched this subject" in an
    ``access_head`` (``subject_events``): SHA-256(domain || salt || sequence as 8 bytes
    big-endian || DID), hex. Only the salt's holders (the subject's wallet, the node serving
    them, an officer the subject gave it to) can compute or recognise one."""
    if len(salt) != 32:
        raise EventError("a subject salt must be 32 random bytes")
    if not 0 <= sequence < 2**63:
        raise EventError("an access event's sequence must be a non-negative 63-bit integer")
    return hashlib.sha256(SUBJECT_EVENT_DOMAIN + salt + sequence.to_bytes(8, "big")
                          + did.encode()).hexdigest()


def utc_now() -> str:
    return format_time(datetime.now(UTC))


def format_time(moment: datetime) -> str:
    """An event's time, written by the project's one time format (consent.utctime); a naive
    time is refused rather than guessed to be UTC or local."""
    if moment.tzinfo is None:
        raise EventError("event times must be timezone-aware")
    return utc_text(moment)


def _hex64(value: Any) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _did(value: Any) -> bool:
    return isinstance(value, str) and _DID.fullmatch(value) is not None


def _token(value: Any) -> bool:
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def _time(value: Any) -> bool:
    return isinstance(value, str) and _time_text(value)


@functools.lru_cache(maxsize=1024)  # a batch's events share a few seconds' times
def _time_text(value: str) -> bool:
    if _TIME.fullmatch(value) is None:
        return False
    try:  # the pattern alone lets through impossible dates such as month 13
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _signature(value: Any) -> bool:
    return isinstance(value, str) and _SIGNATURE.fullmatch(value) is not None


def _count(value: Any) -> bool:
    # 2**53: beyond it RFC 8785 (ECMAScript numbers) and Python's int formatting differ.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def _list_of(check: Callable[[Any], bool], limit: int) -> Callable[[Any], bool]:
    def valid(value: Any) -> bool:
        return isinstance(value, list) and len(value) <= limit and all(check(v) for v in value)

    return valid


Field = tuple[Callable[[Any], bool], str]
HEX: Field = (_hex64, "a lowercase hex SHA-256 digest (64 characters)")
DID: Field = (_did, "a did:key of an organisation's service (requester or node)")
TOKEN: Field = (_token, "a short lowercase token (letters, digits, . _ : -)")
TIME: Field = (_time, "an RFC 3339 UTC time such as 2026-01-31T12:00:00Z")
COUNT: Field = (_count, "a non-negative integer")
HEX_LIST: Field = (_list_of(_hex64, 10_000), "a list of hex SHA-256 digests")
TOKEN_LIST: Field = (_list_of(_token, 16), "a list of short lowercase tokens")
DID_LIST: Field = (_list_of(_did, 256), "a list of service did:keys")
SIGNATURE: Field = (_signature, "an Ed25519 signature as 128 lowercase hex digits")

# One row of an access head's summary ("accesses"): how many events under the head had this
# requester, purpose, scopes and outcome (and the reason, for a refusal). Organisations' DIDs
# and vocabulary words only: never a customer's DID, never data.
MAX_ACCESS_ROWS = 32
ACCESS_ROW: tuple[dict[str, Field], dict[str, Field]] = (
    {"outcome": TOKEN, "count": COUNT},
    {"requester": DID, "purpose": TOKEN, "scopes": TOKEN_LIST, "reason": TOKEN},
)


def _access_rows(value: Any) -> bool:
    if not isinstance(value, list) or len(value) > MAX_ACCESS_ROWS:
        return False
    required, optional = ACCESS_ROW
    fields = {**required, **optional}
    return all(
        isinstance(row, dict) and set(required) <= set(row) <= set(fields)
        and all(fields[name][0](v) for name, v in row.items())
        for row in value
    )


ACCESSES: Field = (_access_rows, f"a list of at most {MAX_ACCESS_ROWS} objects with outcome "
                   "and count, and optionally requester, purpose, scopes and reason")

# Per type: required fields, optional fields.
SCHEMAS: dict[str, tuple[dict[str, Field], dict[str, Field]]] = {
    "grant": (
        {"grant_digest": HEX, "subject_commitment": HEX, "purpose": TOKEN},
        {"scopes": TOKEN_LIST, "requester": DID, "nodes": DID_LIST, "expires": TIME},
    ),
    "revocation": (
        {"revocation_digest": HEX, "grant_digest": HEX, "subject_commitment": HEX},
        {"node": DID},
    ),
    "access_head": (
        {"node": DID, "head": HEX, "sequence": COUNT},
        {
            "requester": DID,
            "purpose": TOKEN,
            "subject_commitments": HEX_LIST,
            "subject_events": HEX_LIST,
            "after": COUNT,
            "grant_digests": HEX_LIST,
            "accesses": ACCESSES,
        },
    ),
    "model": (
        {"model_digest": HEX, "run_id": TOKEN},
        # grant_digests: the grants the nodes used the customers' data under (lineage).
        {"metrics_digest": HEX, "nodes": DID_LIST, "purpose": TOKEN,
         "grant_digests": HEX_LIST},
    ),
    "erasure": (
        {"proof_digest": HEX, "subject_commitment": HEX, "node": DID},
        {},
    ),
    # The coordinator's revocation relay (coordinator.relay): which nodes took the sealed
    # revocations it carried. It cannot read them, so it commits to the envelopes by SHA-256
    # (the wallet that sealed them can show which was its); no grant id, no customer.
    "relay": (
        {"relay_id": TOKEN, "envelope_digests": HEX_LIST, "delivered": DID_LIST,
         "pending": DID_LIST},
        {"refused": DID_LIST},
    ),
}
COMMON: dict[str, Field] = {
    "type": (_token, "the event type"),
    "schema_version": COUNT,
    "time": TIME,
}
# Who wrote the entry (ledger.authority): every type may carry them; the ledger service
# requires author + signature on every new entry. Entries written before have none (legacy).
AUTHORITY: dict[str, Field] = {
    "author": (_did, "the did:key of the entry's author"),
    "signature": SIGNATURE,
    "endorser": (_did, "the did:key of the node that endorses a customer's entry"),
    "endorsement": SIGNATURE,
}


@dataclass(frozen=True)
class _Schema:
    """One event type's rules, prepared once: the fields it allows, those it requires, and
    each allowed field's check (the common fields' are ``validate_event``'s own)."""

    kind: str
    allowed: frozenset[str]
    required: tuple[tuple[str, str], ...]
    checks: dict[str, Field]


def _prepare_schemas() -> dict[str, _Schema]:
    prepared = {}
    for kind, (required, optional) in SCHEMAS.items():
        checks = {**required, **optional, **AUTHORITY}
        prepared[kind] = _Schema(
            kind, frozenset(COMMON) | frozenset(checks),
            tuple((name, description) for name, (_, description) in required.items()), checks)
    return prepared


_PREPARED = _prepare_schemas()


def validate_event(event: Mapping[str, Any]) -> None:
    """Raise :class:`EventError` unless ``event`` is a valid event of its type.

    Error messages name fields, never their values (values could be personal data).
    """
    if not isinstance(event, Mapping):
        raise EventError("an event must be a JSON object")
    kind = event.get("type")
    schema = _PREPARED.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise EventError(f"unknown event type: use one of {', '.join(EVENT_TYPES)}")
    version = event.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # JSON true is not 1
        raise EventError(f"unsupported schema_version: this ledger accepts {SCHEMA_VERSION}")
    if not _time(event.get("time")):
        raise EventError(f"the event's 'time' must be {TIME[1]}")
    if not schema.allowed.issuperset(event.keys()):
        extra = sorted(set(event) - schema.allowed)
        raise EventError(
            f"a {kind} event does not allow the field(s) {', '.join(extra)}: the ledger records "
            "only digests and commitments, never personal data"
        )
    for name, description in schema.required:
        if name not in event:
            raise EventError(f"a {kind} event needs the field '{name}' ({description})")
    checks = schema.checks
    for name, value in event.items():
        field = checks.get(name)
        if field is not None and not field[0](value):
            raise EventError(f"the field '{name}' of a {kind} event must be {field[1]}")


def encode_event(event: Mapping[str, Any]) -> bytes:
    """Validate and return the RFC 8785 canonical bytes that become the log entry.

    A schema-specific encoder: a validated event holds only ASCII strings without quotes,
    backslashes or control characters (every field has a strict pattern), integers below
    2**53, lists of those and (an access head's summary rows) objects of those with ASCII
    keys. For such values ``orjson`` with sorted keys (compact, no escapes to make) produces
    exactly the RFC 8785 form (tests/ledger/test_events_canonical.py checks every event type
    against the rfc8785 library), several times faster than a general JCS encoder, which
    matters on the append path.
    """
    validate_event(event)
    data = orjson.dumps(event if type(event) is dict else dict(event),
                        option=orjson.OPT_SORT_KEYS)
    if len(data) > MAX_EVENT_BYTES:
        raise EventError("the event is larger than 16 KiB: record digests, not documents")
    return data


def make_event(kind: str, *, time: datetime | None = None, **fields: Any) -> dict[str, Any]:
    """Build and validate an event, e.g. ``make_event("grant", grant_digest=..., ...)``."""
    event = {
        "type": kind,
        "schema_version": SCHEMA_VERSION,
        "time": format_time(time) if time else utc_now(),
        **fields,
    }
    validate_event(event)
    return event
