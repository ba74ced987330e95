"""The ``gm`` sealed envelope (``consent.envelope_gm``): SM2-authenticated sessions carrying
SM4-GCM messages, with real keys from ``consent.identity`` and real SM2 / SM4 throughout.

Covers round trips both ways (hypothesis), single-byte tampering anywhere (hypothesis),
truncation, replay, wrong recipient / wrong key / unknown sender / forged opening, expiry and
clock checks, the bounded cache, and that an open session costs no SM2 work per message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consent.envelope_gm import (
    KIND_OPEN,
    KIND_REQUEST,
    GMSession,
    GMSessionCache,
    KeyBindingError,
    issue_key_binding,
    verify_key_binding,
)
from consent.errors import EnvelopeError
from consent.identity import Identity
from consent.sm import SM2PrivateKey, SM2PublicKey

FIXTURE_OK = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40
)


@pytest.fixture(scope="module")
def requester() -> Identity:
    return Identity.generate("gm")


@pytest.fixture(scope="module")
def node() -> Identity:
    return Identity.generate("gm")


@pytest.fixture(scope="module")
def lookup(requester: Identity) -> Callable[[str], SM2PublicKey]:
    registry = {requester.did: requester.sm2.public_key()}
    return registry.__getitem__


@pytest.fixture
def session(node: Identity, requester: Identity) -> GMSession:
    return GMSession.open_to(node.did, node.sm2.public_key(), requester)


@pytest.fixture(scope="module")
def opening_envelope(node: Identity, requester: Identity) -> bytes:
    """One kind-1 envelope, reused by tests that each open it on a fresh cache."""
    return GMSession.open_to(node.did, node.sm2.public_key(), requester).seal(b"first query")


@pytest.fixture(scope="module")
def live(node: Identity, requester: Identity, lookup: Callable) -> tuple[GMSession, GMSessionCache]:
    """An established session shared by the property tests."""
    session = GMSession.open_to(node.did, node.sm2.public_key(), requester)
    cache = GMSessionCache()
    opened = cache.open(session.seal(b"hello"), node, lookup)
    session.open_reply(cache.seal_reply(opened.session_id, b"welcome"))
    return session, cache


def _flip(data: bytes, index: int, mask: int) -> bytes:
    tampered = bytearray(data)
    tampered[index] ^= mask
    return bytes(tampered)


# --------------------------------------------------------------------------- round trips


def test_request_and_reply_round_trip(
    session: GMSession, node: Identity, requester: Identity, lookup: Callable
) -> None:
    cache = GMSessionCache()
    first = session.seal(b"SELECT count(*) ...")
    assert first[:3] == bytes([1, 2, KIND_OPEN])
    opened = cache.open(first, node, lookup)
    assert (opened.sender_did, opened.plaintext) == (requester.did, b"SELECT count(*) ...")
    assert opened.session_id == session.session_id and not session.established
    assert session.open_reply(cache.seal_reply(opened.session_id, b"42 rows")) == b"42 rows"
    assert session.established
    # After the node answered, requests shrink to the 27-byte prefix + ciphertext + tag.
    second = session.seal(b"next")
    assert second[2] == KIND_REQUEST and len(second) == 27 + 4 + 16
    assert cache.open(second, node, lookup).plaintext == b"next"


def test_open_session_needs_no_sm2_per_message(
    session: GMSession, node: Identity, lookup: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"verify": 0, "decrypt": 0}
    real_verify, real_decrypt = SM2PublicKey.verify, SM2PrivateKey.decrypt

    def counting_verify(self: SM2PublicKey, *args: object) -> None:
        calls["verify"] += 1
        return real_verify(self, *args)

    def counting_decrypt(self: SM2PrivateKey, *args: object) -> bytes:
        calls["decrypt"] += 1
        return real_decrypt(self, *args)

    # A spy, not a mock: the real SM2 code runs; the counts prove it runs once per session.
    monkeypatch.setattr(SM2PublicKey, "verify", counting_verify)
    monkeypatch.setattr(SM2PrivateKey, "decrypt", counting_decrypt)
    cache = GMSessionCache()
    # Two openings before any reply (the first reply was lost, say), then normal requests.
    for text in (b"a", b"b"):
        assert cache.open(session.seal(text), node, lookup).plaintext == text
    session.open_reply(cache.seal_reply(session.session_id, b"ok"))
    for i in range(20):
        assert cache.open(session.seal(b"q%d" % i), node, lookup).plaintext == b"q%d" % i
    assert calls == {"verify": 1, "decrypt": 1}


@FIXTURE_OK
@given(request=st.binary(max_size=4096), reply=st.binary(max_size=4096))
def test_property_round_trip(
    live: tuple[GMSession, GMSessionCache],
    node: Identity,
    lookup: Callable,
    request: bytes,
    reply: bytes,
) -> None:
    session, cache = live
    opened = cache.open(session.seal(request), node, lookup)
    assert opened.plaintext == request
    assert session.open_reply(cache.seal_reply(opened.session_id, reply)) == reply


def test_concurrent_requests_in_one_session(
    live: tuple[GMSession, GMSessionCache], node: Identity, lookup: Callable
) -> None:
    session, cache = live
    results: list[bytes] = []
    lock = threading.Lock()

    def worker(worker_id: int) -> None:
        for i in range(25):
            text = b"%d-%d" % (worker_id, i)
            plaintext = cache.open(session.seal(text), node, lookup).plaintext
            with lock:
                results.append(plaintext)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == sorted(b"%d-%d" % (w, i) for w in range(4) for i in range(25))


# --------------------------------------------------------------------------- tampering


@settings(deadline=None, max_examples=40)
@given(data=st.data())
def test_property_tampered_opening_is_rejected_and_stores_nothing(data: st.DataObject) -> None:
    # Module fixtures cannot be passed to @given tests without the health check; build here.
    envelope, node, lookup = _OPENING_CASE.get()
    index = data.draw(st.integers(0, len(envelope) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    cache = GMSessionCache()
    with pytest.raises(EnvelopeError):
        cache.open(_flip(envelope, index, mask), node, lookup)
    assert len(cache) == 0
    assert cache.open(envelope, node, lookup).plaintext == b"first query"


@FIXTURE_OK
@given(data=st.data())
def test_property_tampered_request_and_reply_are_rejected(
    live: tuple[GMSession, GMSessionCache], node: Identity, lookup: Callable, data: st.DataObject
) -> None:
    session, cache = live
    text = data.draw(st.binary(max_size=256), label="plaintext")
    request = session.seal(text)
    index = data.draw(st.integers(0, len(request) - 1), label="request index")
    with pytest.raises(EnvelopeError):
        cache.open(_flip(request, index, data.draw(st.integers(1, 255))), node, lookup)
    # The rejected copy changed nothing: the genuine envelope still opens, once.
    opened = cache.open(request, node, lookup)
    assert opened.plaintext == text
    reply = cache.seal_reply(opened.session_id, text)
    index = data.draw(st.integers(0, len(reply) - 1), label="reply index")
    with pytest.raises(EnvelopeError):
        session.open_reply(_flip(reply, index, data.draw(st.integers(1, 255))))
    assert session.open_reply(reply) == text


class _OpeningCase:
    """Lazily built kind-1 envelope for the property test that cannot take fixtures."""

    def __init__(self) -> None:
        self._value: tuple[bytes, Identity, Callable] | None = None

    def get(self) -> tuple[bytes, Identity, Callable]:
        if self._value is None:
            requester, node = Identity.generate("gm"), Identity.generate("gm")
            envelope = GMSession.open_to(node.did, node.sm2.public_key(), requester).seal(
                b"first query"
            )
            lookup = {requester.did: requester.sm2.public_key()}.__getitem__
            self._value = (envelope, node, lookup)
        return self._value


_OPENING_CASE = _OpeningCase()


def test_every_truncation_is_rejected(
    opening_envelope: bytes, node: Identity, lookup: Callable
) -> None:
    cache = GMSessionCache()
    for length in range(len(opening_envelope)):
        with pytest.raises(EnvelopeError):
            cache.open(opening_envelope[:length], node, lookup)
    assert len(cache) == 0


def test_header_errors_say_what_is_wrong(
    opening_envelope: bytes, node: Identity, lookup: Callable
) -> None:
    cache = GMSessionCache()
    with pytest.raises(EnvelopeError, match="version 9"):
        cache.open(b"\x09" + opening_envelope[1:], node, lookup)
    with pytest.raises(EnvelopeError, match="not a gm"):
        cache.open(opening_envelope[:1] + b"\x01" + opening_envelope[2:], node, lookup)
    with pytest.raises(EnvelopeError, match="kind 7"):
        cache.open(opening_envelope[:2] + b"\x07" + opening_envelope[3:], node, lookup)
    with pytest.raises(EnvelopeError, match="truncated"):
        cache.open(b"", node, lookup)


# --------------------------------------------------------------------------- wrong parties


def test_unknown_session_says_to_re_establish(
    session: GMSession, node: Identity, lookup: Callable
) -> None:
    cache = GMSessionCache()
    session.open_reply(_reply_via(GMSessionCache(), session, node, lookup))
    with pytest.raises(EnvelopeError, match="re-establish"):
        cache.open(session.seal(b"after restart"), node, lookup)
    with pytest.raises(EnvelopeError, match="open a new session"):
        cache.seal_reply(session.session_id, b"x")


def _reply_via(
    cache: GMSessionCache, session: GMSession, node: Identity, lookup: Callable
) -> bytes:
    opened = cache.open(session.seal(b"hi"), node, lookup)
    return cache.seal_reply(opened.session_id, b"hi back")


def test_other_node_and_wrong_key_are_rejected(
    opening_envelope: bytes, node: Identity, lookup: Callable
) -> None:
    other = Identity.generate("gm")
    with pytest.raises(EnvelopeError, match="addressed to another node"):
        GMSessionCache().open(opening_envelope, other, lookup)
    # Same DID, different SM2 key: the session secret cannot be unwrapped.
    impostor = Identity.from_seed(
        bytes(node.signing_key), profile="gm", sm2=SM2PrivateKey.generate()
    )
    assert impostor.did == node.did
    cache = GMSessionCache()
    with pytest.raises(EnvelopeError, match="sealed to another key"):
        cache.open(opening_envelope, impostor, lookup)
    assert len(cache) == 0


def test_unknown_or_forged_sender_is_rejected(opening_envelope: bytes, node: Identity) -> None:
    def unknown(did: str) -> SM2PublicKey:
        raise KeyError(did)

    with pytest.raises(EnvelopeError, match="no SM2 public key is registered"):
        GMSessionCache().open(opening_envelope, node, unknown)
    stranger = SM2PrivateKey.generate().public_key()
    with pytest.raises(EnvelopeError, match="not signed by the sender"):
        GMSessionCache().open(opening_envelope, node, lambda did: stranger)


def test_intl_identity_cannot_use_gm(node: Identity) -> None:
    with pytest.raises(EnvelopeError, match="no SM2 key"):
        GMSession.open_to(node.did, node.sm2.public_key(), Identity.generate("intl"))


def test_reply_from_another_session_is_rejected(
    node: Identity, requester: Identity, lookup: Callable
) -> None:
    cache = GMSessionCache()
    first = GMSession.open_to(node.did, node.sm2.public_key(), requester)
    second = GMSession.open_to(node.did, node.sm2.public_key(), requester)
    reply = _reply_via(cache, first, node, lookup)
    with pytest.raises(EnvelopeError, match="another gm session"):
        second.open_reply(reply)
    with pytest.raises(EnvelopeError, match="expected a gm reply"):
        first.open_reply(first.seal(b"not a reply"))


# --------------------------------------------------------------------------- replay and time


def test_replays_are_rejected(session: GMSession, node: Identity, lookup: Callable) -> None:
    cache = GMSessionCache()
    envelope = session.seal(b"once")
    cache.open(envelope, node, lookup)
    with pytest.raises(EnvelopeError, match="replayed"):
        cache.open(envelope, node, lookup)
    reply = cache.seal_reply(session.session_id, b"answer")
    session.open_reply(reply)
    with pytest.raises(EnvelopeError, match="replayed"):
        session.open_reply(reply)
    # Out-of-order delivery inside the window is fine.
    later, earlier = session.seal(b"2"), session.seal(b"3")
    assert cache.open(earlier, node, lookup).plaintext == b"3"
    assert cache.open(later, node, lookup).plaintext == b"2"


def test_session_expiry_and_clock_checks(
    node: Identity, requester: Identity, lookup: Callable
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    session = GMSession.open_to(
        node.did, node.sm2.public_key(), requester, ttl=timedelta(minutes=10), now=start
    )
    envelope = session.seal(b"q", now=start)
    with pytest.raises(EnvelopeError, match="created in the future"):
        GMSessionCache().open(envelope, node, lookup, now=start - timedelta(minutes=6))
    with pytest.raises(EnvelopeError, match="too old"):
        GMSessionCache().open(envelope, node, lookup, now=start + timedelta(minutes=11))
    cache = GMSessionCache()
    cache.open(envelope, node, lookup, now=start + timedelta(minutes=1))
    with pytest.raises(EnvelopeError, match="expired"):
        cache.seal_reply(session.session_id, b"late", now=start + timedelta(minutes=10))
    with pytest.raises(EnvelopeError, match="expired"):
        session.seal(b"late", now=start + timedelta(minutes=10))
    long = GMSession.open_to(
        node.did, node.sm2.public_key(), requester, ttl=timedelta(hours=25), now=start
    )
    with pytest.raises(EnvelopeError, match="longer than"):
        GMSessionCache().open(long.seal(b"q", now=start), node, lookup, now=start)


def test_cache_is_bounded(node: Identity, requester: Identity, lookup: Callable) -> None:
    cache = GMSessionCache(max_sessions=2)
    sessions = [GMSession.open_to(node.did, node.sm2.public_key(), requester) for _ in range(3)]
    for session in sessions:
        cache.open(session.seal(b"open"), node, lookup)
        session.open_reply(cache.seal_reply(session.session_id, b"ok"))
    assert len(cache) == 2
    # The least recently used session was evicted; its requester is told to re-establish.
    with pytest.raises(EnvelopeError, match="re-establish"):
        cache.open(sessions[0].seal(b"again"), node, lookup)
    assert cache.open(sessions[2].seal(b"again"), node, lookup).plaintext == b"again"


# --------------------------------------------------------------------------- SM2 key binding

WINDOW = timedelta(minutes=5)


def test_key_binding_round_trip_names_the_senders_sm2_key(requester: Identity) -> None:
    binding = issue_key_binding(requester)
    # Ed25519 only: checking it must cost no SM2 verification.
    assert binding["proof"]["cryptosuite"] == "eddsa-jcs-2022"
    assert binding["sm2PublicKey"] == requester.sm2.public_key().to_hex()
    key = verify_key_binding(binding, requester.did, max_age=WINDOW)
    assert key == requester.sm2.public_key()


def test_key_binding_defects_are_refused(requester: Identity) -> None:
    binding = issue_key_binding(requester)
    other = Identity.generate("gm")
    with pytest.raises(KeyBindingError, match="needs an SM2KeyBinding"):
        verify_key_binding(None, requester.did, max_age=WINDOW)
    with pytest.raises(KeyBindingError, match="another DID"):
        verify_key_binding(binding, other.did, max_age=WINDOW)
    swapped = {**binding, "sm2PublicKey": other.sm2.public_key().to_hex()}
    with pytest.raises(KeyBindingError, match="signature is invalid"):
        verify_key_binding(swapped, requester.did, max_age=WINDOW)
    # A binding signed by another DID for the requester's DID is a forgery.
    forged = issue_key_binding(other)
    forged = {**forged, "did": requester.did}
    with pytest.raises(KeyBindingError, match="signature is invalid"):
        verify_key_binding(forged, requester.did, max_age=WINDOW)
    chained = {**binding, "proof": [binding["proof"], binding["proof"]]}
    with pytest.raises(KeyBindingError, match="one eddsa-jcs-2022 proof"):
        verify_key_binding(chained, requester.did, max_age=WINDOW)
    old = issue_key_binding(requester, now=datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(KeyBindingError, match="too old"):
        verify_key_binding(old, requester.did, max_age=WINDOW)
    future = issue_key_binding(requester, now=datetime.now(UTC) + timedelta(hours=1))
    with pytest.raises(KeyBindingError, match="in the future"):
        verify_key_binding(future, requester.did, max_age=WINDOW)


def test_lookup_reason_reaches_the_envelope_error(
    opening_envelope: bytes, node: Identity, requester: Identity
) -> None:
    def refuse(did: str) -> SM2PublicKey:
        return verify_key_binding({"type": "x"}, did, max_age=WINDOW)

    cache = GMSessionCache()
    with pytest.raises(EnvelopeError, match=r"registered for the sender.*needs an SM2KeyBinding"):
        cache.open(opening_envelope, node, refuse)
    assert len(cache) == 0

    binding = issue_key_binding(requester)
    opened = cache.open(
        opening_envelope, node, lambda did: verify_key_binding(binding, did, max_age=WINDOW)
    )
    assert opened.sender_did == requester.did and opened.plaintext == b"first query"


# -- relayed openings (a revocation the coordinator keeps and retries) ------------------------


def test_a_relayed_opening_opens_whatever_its_age_and_replies_never_reuse_a_nonce(
        node: Identity, requester: Identity, lookup: Callable) -> None:
    from consent.envelope_gm import open_relayed

    long_ago = datetime.now(UTC) - timedelta(days=3)
    session = GMSession.open_to(node.did, node.sm2.public_key(), requester, now=long_ago)
    envelope = session.seal(b"revoke", now=long_ago)
    with pytest.raises(EnvelopeError, match=r"too old|expired"):  # a live opening is refused
        GMSessionCache().open(envelope, node, lookup)
    replies = []
    for _ in range(2):  # a retry opens it again: no cache, no counter window
        opened, reply = open_relayed(envelope, node, lookup)
        assert (opened.sender_did, opened.plaintext) == (requester.did, b"revoke")
        replies.append(reply.seal(b"receipt"))
    counters = [int.from_bytes(r[19:27], "big") for r in replies]
    assert all(c >= 2**32 for c in counters) and counters[0] != counters[1]  # above any live
    assert session.open_reply(replies[1]) == b"receipt"


def test_a_relayed_request_must_be_an_opening_to_this_node_signed_by_its_sender(
        node: Identity, requester: Identity, lookup: Callable) -> None:
    from consent.envelope_gm import open_relayed

    session = GMSession.open_to(node.did, node.sm2.public_key(), requester)
    opening = session.seal(b"revoke")
    with pytest.raises(EnvelopeError, match="addressed to another node"):
        open_relayed(opening, Identity.generate("gm"), lookup)
    forged = bytearray(opening)
    forged[60] ^= 1  # inside the signed opening
    with pytest.raises(EnvelopeError):
        open_relayed(bytes(forged), node, lookup)
    cache = GMSessionCache()
    cache.open(opening, node, lookup)
    session.open_reply(cache.seal_reply(session.session_id, b"ok"))
    with pytest.raises(EnvelopeError, match="session of its own"):
        open_relayed(session.seal(b"in the session"), node, lookup)
