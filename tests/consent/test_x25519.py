"""X25519 (RFC 7748) through libsodium, the primitive under every ``intl`` sealed envelope.

- ``x25519/rfc7748_x25519.json``: the §5.2 scalar multiplications, the iterated test after 1,
  1,000 and 1,000,000 rounds (the last takes about a minute with
  ``nacl.bindings.crypto_scalarmult`` on one core, so it is marked ``slow``; it still runs), and
  the §6.1 Alice/Bob exchange.
- ``x25519/wycheproof_x25519_test.json``: every valid and acceptable case gives the expected
  shared secret, except the 31 low-order public keys whose shared secret is all zeros:
  libsodium refuses those (``crypto_scalarmult`` returns -1), and that refusal is asserted
  explicitly, for the raw call and for ``nacl.public.Box``, which ``consent.envelope`` uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.public
import pytest

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "x25519"
ZERO = bytes(32)


def _rfc7748() -> dict[str, Any]:
    return json.loads((VECTORS / "rfc7748_x25519.json").read_text())


def _iterations() -> list[Any]:
    params = []
    for result in _rfc7748()["iterated"]["results"]:
        rounds = result["iterations"]
        marks = [pytest.mark.slow] if rounds >= 1_000_000 else []
        params.append(pytest.param(rounds, result["k"], id=f"{rounds}-rounds", marks=marks))
    return params


def _wycheproof_cases() -> list[Any]:
    data = json.loads((VECTORS / "wycheproof_x25519_test.json").read_text())
    return [
        pytest.param(test, id=f"tc{test['tcId']}-{test['result']}-{'+'.join(test['flags'])}")
        for group in data["testGroups"]
        for test in group["tests"]
    ]


@pytest.fixture(scope="module")
def rfc(shared_dir: Path) -> dict[str, Any]:
    return json.loads((shared_dir / "vectors" / "x25519" / "rfc7748_x25519.json").read_text())


@pytest.mark.parametrize("vector", _rfc7748()["scalar_mult"], ids=lambda v: v["id"])
def test_scalar_mult(vector: dict[str, str]) -> None:
    scalar, u = bytes.fromhex(vector["scalar"]), bytes.fromhex(vector["u"])
    assert nacl.bindings.crypto_scalarmult(scalar, u).hex() == vector["output"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("rounds", "expected"), _iterations())
def test_iterated(rfc: dict[str, Any], rounds: int, expected: str) -> None:
    k = u = bytes.fromhex(rfc["iterated"]["start"])
    scalarmult = nacl.bindings.crypto_scalarmult
    for _ in range(rounds):
        k, u = scalarmult(k, u), k
    assert k.hex() == expected


def test_alice_bob_exchange(rfc: dict[str, Any]) -> None:
    dh = rfc["diffie_hellman"]
    alice, bob = bytes.fromhex(dh["alice_private"]), bytes.fromhex(dh["bob_private"])
    assert nacl.bindings.crypto_scalarmult_base(alice).hex() == dh["alice_public"]
    assert nacl.bindings.crypto_scalarmult_base(bob).hex() == dh["bob_public"]
    alice_pub, bob_pub = bytes.fromhex(dh["alice_public"]), bytes.fromhex(dh["bob_public"])
    assert nacl.bindings.crypto_scalarmult(alice, bob_pub).hex() == dh["shared_secret"]
    assert nacl.bindings.crypto_scalarmult(bob, alice_pub).hex() == dh["shared_secret"]
    # The NaCl box key both sides derive (HSalsa20 of that secret) must agree too.
    alice_box = nacl.public.Box(nacl.public.PrivateKey(alice), nacl.public.PublicKey(bob_pub))
    bob_box = nacl.public.Box(nacl.public.PrivateKey(bob), nacl.public.PublicKey(alice_pub))
    assert alice_box.shared_key() == bob_box.shared_key()
    assert bob_box.decrypt(alice_box.encrypt(b"rfc7748")) == b"rfc7748"


def test_wycheproof_count(shared_dir: Path) -> None:
    data = json.loads(
        (shared_dir / "vectors" / "x25519" / "wycheproof_x25519_test.json").read_text()
    )
    tests = [t for g in data["testGroups"] for t in g["tests"]]
    zero = [t for t in tests if t["shared"] == ZERO.hex()]
    assert len(tests) == 518
    assert len(zero) == 31
    assert all("ZeroSharedSecret" in t["flags"] for t in zero)


@pytest.mark.parametrize("test", _wycheproof_cases())
def test_wycheproof(test: dict[str, Any]) -> None:
    assert test["result"] in ("valid", "acceptable")  # this file has no "invalid" cases
    private, public = bytes.fromhex(test["private"]), bytes.fromhex(test["public"])
    if test["shared"] != ZERO.hex():
        assert nacl.bindings.crypto_scalarmult(private, public).hex() == test["shared"]
        return
    # Low-order public key: libsodium refuses the all-zero secret rather than returning it,
    # so a sealed envelope can never be keyed by a value an attacker knows.
    assert "LowOrderPublic" in test["flags"] or "ZeroSharedSecret" in test["flags"]
    with pytest.raises(nacl.exceptions.RuntimeError):
        nacl.bindings.crypto_scalarmult(private, public)
    with pytest.raises(nacl.exceptions.RuntimeError):
        nacl.public.Box(nacl.public.PrivateKey(private), nacl.public.PublicKey(public))
