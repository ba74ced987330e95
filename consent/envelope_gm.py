"""Sealed envelopes for the ``gm`` profile: an SM2-authenticated session (GB/T 32918.2
signature, GB/T 32918.4 encryption) carrying SM4-GCM messages (GB/T 32907 SM4, NIST SP 800-38D
GCM, RFC 8998), with keys derived by HKDF (RFC 5869) over SM3 (GB/T 32905).

SM2 in ``gmssl`` costs milliseconds per operation, so it is spent once per session, never per
query: the requester's first envelope carries a fresh 32-byte session secret encrypted to the
node's SM2 key and the requester's SM2 signature over the session parameters; every message
after that is only SM4-GCM. Replies travel under the same session with a separate key and
nonce space. Only the node could decrypt the secret, so a reply that opens proves the node;
only the requester could sign the opening, so a request that opens proves the requester.

Byte format, version 1 (all integers big-endian)::

    offset  size  field
    0       1     format version = 1
    1       1     profile = 2 (gm)
    2       1     kind: 1 = request opening a session, 2 = request in a session, 3 = reply
    3       16    session id (random)
    19      8     message counter (per direction, from 0)
    -- kind 1 only: the session opening --
    27      8     created, Unix seconds
    35      8     expires, Unix seconds
    43      1+n   sender DID (1-byte length, UTF-8)
    ..      1+n   recipient DID (1-byte length, UTF-8)
    ..      2+n   wrapped secret: SM2 encryption (C1 || C3 || C2) of the 32-byte session
                  secret to the recipient's SM2 public key
    ..      64    SM2 signature r || s (SM3, user ID 1234567812345678) by the sender over
                  "sovereign-fabric/gm-envelope/v1/open" || bytes 0-2 || session id ||
                  every byte from "created" to the end of the wrapped secret
    -- all kinds --
    ..      n+16  SM4-GCM ciphertext || tag. Key: request key (kinds 1, 2) or reply key
                  (kind 3), HKDF-SM3(secret, salt = session id, info = INFO) split in two.
                  Nonce: "req\\0" or "rep\\0" || counter. AAD: every byte before it.

Until a reply has been opened, the requester repeats the opening in every request (kind 1),
so a lost first envelope costs nothing; the node recognises a repeated opening by its SM3
digest and skips the SM2 work. Within a session each direction's counters are accepted once
(a 1024-message sliding window, as in RFC 4303), so a replayed envelope is refused. A session
opening is accepted for ``open_window`` after its creation time; callers that need replay
protection beyond a live session put a nonce and a timestamp in the plaintext
(``consent.replay.ReplayGuard``), as in the ``intl`` profile.

A request a relay keeps and forwards later (a revocation the coordinator retries until the
node has it) is sealed in a session of its own: a kind-1 opening that the node opens with
``open_relayed``, whatever its age, outside the session cache, and answers with a
``RelayedReply`` (replies counted from a random point, so no retry reuses a nonce). That
waives replay protection, so the node takes only idempotent requests this way.

A node learns a sender's SM2 key without a registry through an ``SM2KeyBinding``: a statement
``{"type": "SM2KeyBinding", "did", "sm2PublicKey", "created"}`` signed by the sender's did:key
with one W3C Data Integrity ``eddsa-jcs-2022`` proof (``issue_key_binding``). The node checks it
once per session (``verify_key_binding``) inside the lookup it hands to ``GMSessionCache.open``.
"""

from __future__ import annotations

import secrets
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from consent.errors import ConsentError, EnvelopeError, SignatureError
from consent.sm import SM4GCM, SM2PrivateKey, SM2PublicKey, sm3

__all__ = [
    "KIND_OPEN",
    "KIND_REPLY",
    "KIND_REQUEST",
    "PROFILE_GM",
    "SESSION_ID_BYTES",
    "VERSION",
    "GMOpened",
    "GMSession",
    "GMSessionCache",
    "KeyBindingError",
    "RelayedReply",
    "SM2PublicLookup",
    "issue_key_binding",
    "verify_key_binding",
]

VERSION = 1
PROFILE_GM = 2
KIND_OPEN, KIND_REQUEST, KIND_REPLY = 1, 2, 3
SESSION_ID_BYTES = 16
SECRET_BYTES = 32
SIGNATURE_BYTES = 64
TAG_BYTES = 16
PREFIX = struct.Struct(">BBB16sQ")  # version, profile, kind, session id, counter
TIMES = struct.Struct(">QQ")  # created, expires
SIGNING_DOMAIN = b"sovereign-fabric/gm-envelope/v1/open"
INFO = b"sovereign-fabric/gm-envelope/v1 request+reply keys"
REPLAY_WINDOW = 1024
MAX_COUNTER = 2**32  # far below SM4-GCM's per-key limits; sessions are short-lived anyway
DEFAULT_TTL = timedelta(minutes=30)

SM2PublicLookup = Callable[[str], SM2PublicKey]
"""Given a sender DID, return its registered SM2 public key (raise LookupError if unknown)."""


class _GMIdentity(Protocol):
    """What this module needs of ``consent.identity.Identity``."""

    @property
    def did(self) -> str: ...

    @property
    def sm2(self) -> SM2PrivateKey | None: ...


@dataclass(frozen=True)
class GMOpened:
    """An opened ``gm`` request: who sealed it, what they sealed, and the session to reply in."""

    sender_did: str
    plaintext: bytes
    session_id: bytes


# --------------------------------------------------------------------------- helpers


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _sm2_key(identity: _GMIdentity, role: str) -> SM2PrivateKey:
    if identity.sm2 is None:
        raise EnvelopeError(
            f"the {role} identity has no SM2 key: the gm profile needs Identity.generate('gm')"
        )
    return identity.sm2


def _derive_keys(secret: bytes, session_id: bytes) -> tuple[SM4GCM, SM4GCM]:
    okm = HKDF(hashes.SM3(), 2 * 16, salt=session_id, info=INFO).derive(secret)
    return SM4GCM(okm[:16]), SM4GCM(okm[16:])


def _nonce(kind: int, counter: int) -> bytes:
    return (b"rep\0" if kind == KIND_REPLY else b"req\0") + counter.to_bytes(8, "big")


def _did_field(did: str) -> bytes:
    raw = did.encode()
    if not 0 < len(raw) < 256:
        raise EnvelopeError("a DID in a gm envelope must be 1 to 255 bytes")
    return bytes([len(raw)]) + raw


class _Reader:
    """Bounds-checked reading of an envelope; every overrun is a truncation error."""

    def __init__(self, data: bytes, offset: int) -> None:
        self.data, self.offset = data, offset

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise EnvelopeError("the gm envelope is truncated")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def take_prefixed(self, length_bytes: int) -> bytes:
        return self.take(int.from_bytes(self.take(length_bytes), "big"))


@dataclass
class _CounterWindow:
    """Sliding-window replay check over message counters (RFC 4303 §3.4.3 style)."""

    top: int = -1
    bits: int = 0

    def check(self, counter: int) -> None:
        if counter > self.top:
            return
        offset = self.top - counter
        if offset >= REPLAY_WINDOW or (self.bits >> offset) & 1:
            raise EnvelopeError(
                "this gm envelope was already received or is too old (replayed counter)"
            )

    def commit(self, counter: int) -> None:
        if counter > self.top:
            shift = counter - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.top = counter
        else:
            self.bits |= 1 << (self.top - counter)


# --------------------------------------------------------------------------- requester side


class GMSession:
    """The requester's side of a session with one node: seals requests, opens replies."""

    def __init__(
        self,
        session_id: bytes,
        opening: bytes,
        request_key: SM4GCM,
        reply_key: SM4GCM,
        expires: datetime,
    ) -> None:
        self.session_id = session_id
        self.expires = expires
        self._opening = opening  # created .. signature, repeated until a reply confirms it
        self._request_key, self._reply_key = request_key, reply_key
        self._counter = 0
        self._replies = _CounterWindow()
        self._established = False
        self._lock = threading.Lock()

    @classmethod
    def open_to(
        cls,
        recipient_did: str,
        recipient_sm2_public: SM2PublicKey,
        sender: _GMIdentity,
        *,
        ttl: timedelta = DEFAULT_TTL,
        now: datetime | None = None,
    ) -> GMSession:
        """Start a session: one SM2 encryption and one SM2 signature, then symmetric only."""
        signer = _sm2_key(sender, "sender")
        if ttl <= timedelta(0):
            raise ValueError("a gm session needs a positive time to live")
        created = _now(now)
        expires = created + ttl
        session_id = secrets.token_bytes(SESSION_ID_BYTES)
        secret = secrets.token_bytes(SECRET_BYTES)
        wrapped = recipient_sm2_public.encrypt(secret)
        body = (
            TIMES.pack(int(created.timestamp()), int(expires.timestamp()))
            + _did_field(sender.did)
            + _did_field(recipient_did)
            + len(wrapped).to_bytes(2, "big")
            + wrapped
        )
        signature = signer.sign(_signed_bytes(session_id, body))
        request_key, reply_key = _derive_keys(secret, session_id)
        return cls(session_id, body + signature, request_key, reply_key, expires)

    @property
    def established(self) -> bool:
        """True once a reply has opened: the node holds the session, openings stop."""
        return self._established

    def seal(self, plaintext: bytes, *, now: datetime | None = None) -> bytes:
        """Seal one request to the node (kind 1 until established, then kind 2)."""
        if _now(now) >= self.expires:
            raise EnvelopeError("the gm session has expired: open a new one with GMSession.open_to")
        with self._lock:
            counter = self._counter
            if counter >= MAX_COUNTER:
                raise EnvelopeError("the gm session has sealed its maximum: open a new one")
            self._counter += 1
            kind = KIND_REQUEST if self._established else KIND_OPEN
        header = PREFIX.pack(VERSION, PROFILE_GM, kind, self.session_id, counter)
        if kind == KIND_OPEN:
            header += self._opening
        return header + self._request_key.encrypt(_nonce(kind, counter), plaintext, header)

    def open_reply(self, envelope: bytes) -> bytes:
        """Open the node's reply in this session; raise ``EnvelopeError`` on any defect."""
        kind, session_id, counter = _parse_prefix(envelope)
        if kind != KIND_REPLY:
            raise EnvelopeError("expected a gm reply envelope (kind 3)")
        if session_id != self.session_id:
            raise EnvelopeError("the reply belongs to another gm session")
        header = envelope[: PREFIX.size]
        with self._lock:
            self._replies.check(counter)
        plaintext = self._reply_key.decrypt(_nonce(kind, counter), envelope[PREFIX.size :], header)
        with self._lock:
            self._replies.check(counter)  # again: a concurrent opener may have taken it
            self._replies.commit(counter)
            self._established = True
        return plaintext


def _signed_bytes(session_id: bytes, body: bytes) -> bytes:
    return SIGNING_DOMAIN + bytes([VERSION, PROFILE_GM, KIND_OPEN]) + session_id + body


def _parse_prefix(envelope: bytes) -> tuple[int, bytes, int]:
    if len(envelope) < PREFIX.size + TAG_BYTES:
        raise EnvelopeError("the gm envelope is truncated")
    version, profile, kind, session_id, counter = PREFIX.unpack_from(envelope)
    if version != VERSION:
        raise EnvelopeError(f"unsupported gm envelope version {version}: expected {VERSION}")
    if profile != PROFILE_GM:
        raise EnvelopeError("this envelope is not a gm (SM2 + SM4) envelope")
    if kind not in (KIND_OPEN, KIND_REQUEST, KIND_REPLY):
        raise EnvelopeError(f"unknown gm envelope kind {kind}")
    return kind, session_id, counter


# --------------------------------------------------------------------------- node side


@dataclass
class _NodeSession:
    sender_did: str
    request_key: SM4GCM
    reply_key: SM4GCM
    expires: datetime
    opening_digest: bytes
    requests: _CounterWindow = field(default_factory=_CounterWindow)
    reply_counter: int = 0


@dataclass(frozen=True)
class _Opening:
    created: datetime
    expires: datetime
    sender_did: str
    recipient_did: str
    wrapped: bytes
    signature: bytes
    signed: bytes
    end: int


class GMSessionCache:
    """The node's sessions: bounded in number and lifetime, safe to share between threads.

    ``open`` accepts requests; ``seal_reply`` answers in the session a request came from.
    """

    def __init__(
        self,
        *,
        max_sessions: int = 10_000,
        max_ttl: timedelta = timedelta(hours=24),
        open_window: timedelta = timedelta(minutes=5),
        clock_skew: timedelta = timedelta(minutes=5),
    ) -> None:
        if max_sessions < 1:
            raise ValueError("a gm session cache holds at least one session")
        self.max_sessions = max_sessions
        self.max_ttl, self.open_window, self.clock_skew = max_ttl, open_window, clock_skew
        self._sessions: OrderedDict[bytes, _NodeSession] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def open(
        self,
        envelope: bytes,
        recipient: _GMIdentity,
        sender_sm2_public_lookup: SM2PublicLookup,
        *,
        now: datetime | None = None,
    ) -> GMOpened:
        """Open a request (kind 1 or 2) addressed to ``recipient``."""
        now = _now(now)
        kind, session_id, counter = _parse_prefix(envelope)
        if kind == KIND_REPLY:
            raise EnvelopeError("this is a gm reply: the requester opens it, not the node")
        opening = _parse_opening(envelope) if kind == KIND_OPEN else None
        session = self._lookup(session_id, opening, now)
        if session is None:
            if opening is None:
                raise EnvelopeError(
                    "unknown or expired gm session: re-establish it by opening a new session"
                )
            session = self._accept_opening(
                session_id, opening, recipient, sender_sm2_public_lookup, now
            )
        body_start = opening.end if opening else PREFIX.size
        with self._lock:
            session.requests.check(counter)
        plaintext = session.request_key.decrypt(
            _nonce(kind, counter), envelope[body_start:], envelope[:body_start]
        )
        with self._lock:
            # Two threads may have accepted the same opening at once: keep the first one,
            # so both share one replay window.
            stored = self._sessions.get(session_id)
            if stored is not None and stored is not session:
                if stored.opening_digest != session.opening_digest:
                    raise EnvelopeError(
                        "this gm session id is already in use by another session: "
                        "open a new session"
                    )
                session = stored
            session.requests.check(counter)
            session.requests.commit(counter)
            self._store(session_id, session, now)
        return GMOpened(session.sender_did, plaintext, session_id)

    def seal_reply(
        self, session_id: bytes, plaintext: bytes, *, now: datetime | None = None
    ) -> bytes:
        """Seal a reply to the requester of ``session_id`` (from ``GMOpened.session_id``)."""
        now = _now(now)
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.expires <= now:
                raise EnvelopeError(
                    "unknown or expired gm session: the requester must open a new session"
                )
            counter = session.reply_counter
            if counter >= MAX_COUNTER:
                raise EnvelopeError("the gm session has sealed its maximum: open a new one")
            session.reply_counter += 1
        header = PREFIX.pack(VERSION, PROFILE_GM, KIND_REPLY, session_id, counter)
        return header + session.reply_key.encrypt(_nonce(KIND_REPLY, counter), plaintext, header)

    # ---- internals

    def _lookup(
        self, session_id: bytes, opening: _Opening | None, now: datetime
    ) -> _NodeSession | None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires <= now:
                del self._sessions[session_id]
                session = None
        # A repeated opening is recognised by its digest, so no SM2 work is redone.
        repeated = session is not None and opening is not None
        if session is not None and opening is not None and repeated \
                and sm3(opening.signed + opening.signature) != session.opening_digest:
            raise EnvelopeError(
                "this gm session id is already in use by another session: open a new session"
            )
        return session

    def _accept_opening(
        self,
        session_id: bytes,
        opening: _Opening,
        recipient: _GMIdentity,
        lookup: SM2PublicLookup,
        now: datetime,
    ) -> _NodeSession:
        if opening.recipient_did != recipient.did:
            raise EnvelopeError("the gm envelope is addressed to another node")
        self._check_times(opening, now)
        return _accept(session_id, opening, recipient, lookup)

    def _check_times(self, opening: _Opening, now: datetime) -> None:
        if opening.created > now + self.clock_skew:
            raise EnvelopeError("the gm session was created in the future: check the clock")
        if now - opening.created > self.open_window + self.clock_skew:
            raise EnvelopeError("the gm session opening is too old: open a new session")
        if opening.expires <= now:
            raise EnvelopeError("the gm session has expired: open a new session")
        if opening.expires - opening.created > self.max_ttl:
            raise EnvelopeError(
                f"the gm session asks to live longer than {self.max_ttl}: open a shorter one"
            )

    def _store(self, session_id: bytes, session: _NodeSession, now: datetime) -> None:
        """Insert or refresh under the lock; evict expired, then least recently used."""
        self._sessions[session_id] = session
        self._sessions.move_to_end(session_id)
        if len(self._sessions) > self.max_sessions:
            for stale in [k for k, s in self._sessions.items() if s.expires <= now]:
                del self._sessions[stale]
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)


def _accept(
    session_id: bytes, opening: _Opening, recipient: _GMIdentity, lookup: SM2PublicLookup
) -> _NodeSession:
    """A session from an opening whose address and times were checked: the sender's SM2 key
    (from ``lookup``) must have signed it, and the secret must decrypt with ours."""
    try:
        sender_public = lookup(opening.sender_did)
    except (LookupError, ConsentError, ValueError) as exc:
        # The lookup's own sentence (e.g. why a key binding was refused) says how to fix it.
        reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
        raise EnvelopeError(
            "no SM2 public key is registered for the sender of this gm envelope"
            + (f": {reason}" if reason else "")
        ) from None
    if not isinstance(sender_public, SM2PublicKey):
        raise EnvelopeError(
            "no SM2 public key is registered for the sender of this gm envelope"
        )
    # Verify the signature before using anything the envelope carries.
    try:
        sender_public.verify(opening.signed, opening.signature)
    except SignatureError:
        raise EnvelopeError(
            "the gm session opening is not signed by the sender's SM2 key: it was altered "
            "or forged"
        ) from None
    try:
        secret = _sm2_key(recipient, "recipient").decrypt(opening.wrapped)
    except EnvelopeError:
        raise EnvelopeError(
            "the gm session key does not decrypt with this node's SM2 key: it was sealed "
            "to another key"
        ) from None
    if len(secret) != SECRET_BYTES:
        raise EnvelopeError("the gm session secret has the wrong length")
    request_key, reply_key = _derive_keys(secret, session_id)
    digest = sm3(opening.signed + opening.signature)
    return _NodeSession(opening.sender_did, request_key, reply_key, opening.expires, digest)


def _parse_opening(envelope: bytes) -> _Opening:
    reader = _Reader(envelope, PREFIX.size)
    created_s, expires_s = TIMES.unpack(reader.take(TIMES.size))
    try:
        sender_did = reader.take_prefixed(1).decode()
        recipient_did = reader.take_prefixed(1).decode()
        created = datetime.fromtimestamp(created_s, UTC)
        expires = datetime.fromtimestamp(expires_s, UTC)
    except (UnicodeDecodeError, ValueError, OverflowError, OSError):
        raise EnvelopeError("the gm session opening is malformed") from None
    wrapped = reader.take_prefixed(2)
    signed_end = reader.offset
    signature = reader.take(SIGNATURE_BYTES)
    if len(envelope) - reader.offset < TAG_BYTES:
        raise EnvelopeError("the gm envelope is truncated")
    session_id = envelope[3 : 3 + SESSION_ID_BYTES]
    signed = _signed_bytes(session_id, envelope[PREFIX.size : signed_end])
    return _Opening(
        created, expires, sender_did, recipient_did, wrapped, signature, signed, reader.offset
    )


# --------------------------------------------------------------------------- relayed openings


@dataclass(frozen=True)
class RelayedReply:
    """The reply side of a relayed session opening, held outside the session cache.

    Replies count from a random point at or above ``MAX_COUNTER`` (which no cached session
    reaches): a relay retried after the node lost the session opens it afresh, so a counter
    from 0 would reuse an SM4-GCM nonce under the same reply key.
    """

    session_id: bytes
    reply_key: SM4GCM

    def seal(self, plaintext: bytes) -> bytes:
        counter = MAX_COUNTER + secrets.randbelow(2**63 - MAX_COUNTER)
        header = PREFIX.pack(VERSION, PROFILE_GM, KIND_REPLY, self.session_id, counter)
        return header + self.reply_key.encrypt(_nonce(KIND_REPLY, counter), plaintext, header)


def open_relayed(
    envelope: bytes, recipient: _GMIdentity, sender_sm2_public_lookup: SM2PublicLookup
) -> tuple[GMOpened, RelayedReply]:
    """Open a session opening (kind 1) that a relay kept and forwards, maybe long after it
    was sealed: a session of its own for one request, checked exactly as a live opening
    (addressed to ``recipient``, signed by the sender's SM2 key, the secret sealed to ours)
    except for its age, and kept in no session cache, so a retry opens it again.

    Only for requests that change nothing when applied twice (a revocation, whose method the
    caller checks inside the plaintext): neither the opening's time window nor the counter
    window guards against replay here.
    """
    kind, session_id, counter = _parse_prefix(envelope)
    if kind != KIND_OPEN:
        raise EnvelopeError(
            "a relayed gm request must open a session of its own (kind 1): the node may have "
            "closed any other by the time it arrives"
        )
    opening = _parse_opening(envelope)
    if opening.recipient_did != recipient.did:
        raise EnvelopeError("the gm envelope is addressed to another node")
    session = _accept(session_id, opening, recipient, sender_sm2_public_lookup)
    plaintext = session.request_key.decrypt(
        _nonce(kind, counter), envelope[opening.end:], envelope[:opening.end])
    return (GMOpened(session.sender_did, plaintext, session_id),
            RelayedReply(session_id, session.reply_key))


# --------------------------------------------------------------------------- SM2 key binding

KEY_BINDING_TYPE = "SM2KeyBinding"
KEY_BINDING_PURPOSE = "authentication"


class KeyBindingError(EnvelopeError, LookupError):
    """An SM2KeyBinding is missing, malformed, forged, stale or names another DID."""


def issue_key_binding(identity: _GMIdentity, *, now: datetime | None = None) -> dict[str, Any]:
    """The sender's did:key vouches for its SM2 key: one Ed25519 (eddsa-jcs-2022) proof.

    Ed25519 only, on purpose: the verifier trusts nothing but the DID, and an Ed25519 check
    costs microseconds where an SM2 one costs milliseconds.
    """
    from consent.identity import Identity
    from consent.integrity import format_time, sign_document

    sm2 = _sm2_key(identity, "sender")
    if not isinstance(identity, Identity):
        raise TypeError("issue_key_binding needs a consent.identity.Identity")
    created = _now(now)
    statement = {
        "type": KEY_BINDING_TYPE,
        "did": identity.did,
        "sm2PublicKey": sm2.public_key().to_hex(),
        "created": format_time(created),
    }
    ed25519_only = Identity(identity.signing_key)  # same DID, no SM2 proof in the chain
    return sign_document(
        statement, ed25519_only, proof_purpose=KEY_BINDING_PURPOSE, created=created
    )


def verify_key_binding(
    document: Any,
    sender_did: str,
    *,
    max_age: timedelta,
    clock_skew: timedelta = timedelta(minutes=5),
    now: datetime | None = None,
) -> SM2PublicKey:
    """The SM2 key that ``sender_did`` vouches for in ``document``; ``KeyBindingError`` if not.

    ``max_age`` bounds how old the statement may be, so a binding of a retired SM2 key
    cannot be replayed for long.
    """
    from consent.integrity import verify_document

    if not isinstance(document, dict) or document.get("type") != KEY_BINDING_TYPE:
        raise KeyBindingError(
            "the gm session opening needs an SM2KeyBinding signed by the sender's did:key"
        )
    proof = document.get("proof")
    if not isinstance(proof, dict) or proof.get("proofPurpose") != KEY_BINDING_PURPOSE:
        raise KeyBindingError(
            "the SM2KeyBinding must carry one eddsa-jcs-2022 proof for authentication"
        )
    try:
        signer = verify_document(document)
    except ConsentError as exc:
        raise KeyBindingError(f"the SM2KeyBinding's signature is invalid ({exc})") from None
    if signer != sender_did or document.get("did") != sender_did:
        raise KeyBindingError("the SM2KeyBinding is signed by or for another DID than the sender")
    _check_binding_time(document.get("created"), max_age, clock_skew, _now(now))
    try:
        return SM2PublicKey.from_hex(document.get("sm2PublicKey"))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise KeyBindingError("the SM2KeyBinding names no valid SM2 public key") from None


def _check_binding_time(
    value: Any, max_age: timedelta, clock_skew: timedelta, now: datetime
) -> None:
    try:
        created = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise KeyBindingError("the SM2KeyBinding's created time is not RFC 3339") from None
    if created.tzinfo is None:
        raise KeyBindingError("the SM2KeyBinding's created time must be UTC (end it with Z)")
    if created > now + clock_skew:
        raise KeyBindingError("the SM2KeyBinding was created in the future: check the clock")
    if now - created > max_age + clock_skew:
        raise KeyBindingError("the SM2KeyBinding is too old: sign a fresh one for this session")
