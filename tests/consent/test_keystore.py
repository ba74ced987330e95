"""Passphrase-encrypted keystores (Argon2id, RFC 9106, via libsodium ``crypto_pwhash``, then
XSalsa20-Poly1305 ``secretbox``): round trips, 0600 files, and every way to fail opening one.

Each Argon2id derivation costs about 0.15 s (64 MiB), so tampering is checked at chosen points
plus a small hypothesis sample rather than at every byte of the file.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from consent.errors import KeystoreError
from consent.identity import Identity
from consent.keystore import (
    MAX_MEMLIMIT,
    MAX_OPSLIMIT,
    MEMLIMIT,
    OPSLIMIT,
    encrypt_secret,
    load_identity,
    save_identity,
)

PASSPHRASE = "correct horse battery staple"
SEED = bytes(range(32))
IDENTITY = Identity.from_seed(SEED)


@pytest.fixture(scope="module")
def keystore_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ks") / "identity.json"
    save_identity(path, IDENTITY, PASSPHRASE)
    return path.read_text()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tampered.json"
    path.write_text(text)
    return path


def _edit(text: str, change: Any) -> str:
    document = json.loads(text)
    change(document)
    return json.dumps(document)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "wallet" / "identity.json"  # parent directory is created
    save_identity(path, IDENTITY, PASSPHRASE)
    loaded = load_identity(path, PASSPHRASE)
    assert loaded.did == IDENTITY.did
    assert loaded.signing_key.encode() == SEED
    assert loaded.profile == "intl" and loaded.sm2 is None
    assert _mode(path) == 0o600
    assert os.listdir(path.parent) == ["identity.json"]  # no temporary file left behind


def test_file_holds_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    save_identity(path, IDENTITY, PASSPHRASE)
    text = path.read_text()
    assert SEED.hex() not in text
    assert base64.b64encode(SEED).decode() not in text
    assert PASSPHRASE not in text
    document = json.loads(text)
    assert document["kdf"]["name"] == "argon2id"
    assert (document["kdf"]["opslimit"], document["kdf"]["memlimit"]) == (OPSLIMIT, MEMLIMIT)


def test_overwrite_keeps_0600(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    path.write_text("old")
    path.chmod(0o644)
    save_identity(path, IDENTITY, PASSPHRASE)
    assert _mode(path) == 0o600
    assert load_identity(path, PASSPHRASE).did == IDENTITY.did


def test_two_saves_use_fresh_salt(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    save_identity(first, IDENTITY, PASSPHRASE)
    save_identity(second, IDENTITY, PASSPHRASE)
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert a["kdf"]["salt"] != b["kdf"]["salt"]
    assert a["ciphertext"] != b["ciphertext"]


def test_unicode_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    save_identity(path, IDENTITY, "pässwörd ✓ 密码")
    assert load_identity(path, "pässwörd ✓ 密码").did == IDENTITY.did
    with pytest.raises(KeystoreError):
        load_identity(path, "passwort ✓ 密码")


def test_gm_identity_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "gm.json"
    identity = Identity.generate("gm")
    assert identity.sm2 is not None
    save_identity(path, identity, PASSPHRASE)
    loaded = load_identity(path, PASSPHRASE)
    assert loaded.profile == "gm" and loaded.did == identity.did
    assert loaded.sm2 is not None and loaded.sm2.to_hex() == identity.sm2.to_hex()


@pytest.mark.parametrize(
    "wrong", [PASSPHRASE + " ", PASSPHRASE.upper(), "x"], ids=["trailing-space", "case", "other"]
)
def test_wrong_passphrase(tmp_path: Path, keystore_text: str, wrong: str) -> None:
    with pytest.raises(KeystoreError, match="wrong passphrase") as info:
        load_identity(_write(tmp_path, keystore_text), wrong)
    assert wrong not in str(info.value) and PASSPHRASE not in str(info.value)


def test_empty_passphrase_on_save_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    with pytest.raises(KeystoreError, match="empty"):
        save_identity(path, IDENTITY, "")
    assert list(tmp_path.iterdir()) == []


def test_empty_passphrase_on_load(tmp_path: Path, keystore_text: str) -> None:
    with pytest.raises(KeystoreError, match="empty"):
        load_identity(_write(tmp_path, keystore_text), "")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="no keystore"):
        load_identity(tmp_path / "absent.json", PASSPHRASE)


def _flip_b64(field: str, index: int) -> Any:
    def change(document: dict) -> None:
        holder = document["kdf"] if field == "salt" else document
        raw = bytearray(base64.b64decode(holder[field]))
        raw[index] ^= 0x01
        holder[field] = base64.b64encode(bytes(raw)).decode()

    return change


TAMPERS = {
    "salt-first": _flip_b64("salt", 0),
    "salt-last": _flip_b64("salt", -1),
    "nonce": _flip_b64("ciphertext", 0),
    "tag": _flip_b64("ciphertext", 30),
    "body-last": _flip_b64("ciphertext", -1),
    "opslimit-raised": lambda d: d["kdf"].update(opslimit=OPSLIMIT + 1),
    "memlimit-raised": lambda d: d["kdf"].update(memlimit=MEMLIMIT * 2),
    "ciphertext-truncated": lambda d: d.update(ciphertext=d["ciphertext"][:-8]),
}


@pytest.mark.parametrize("change", list(TAMPERS.values()), ids=list(TAMPERS))
def test_tampered_field(tmp_path: Path, keystore_text: str, change: Any) -> None:
    with pytest.raises(KeystoreError):
        load_identity(_write(tmp_path, _edit(keystore_text, change)), PASSPHRASE)


@pytest.mark.parametrize(
    ("field", "value"),
    [("cipher", "aes-256-gcm"), ("kdf.name", "scrypt")],
    ids=["cipher", "kdf-name"],
)
def test_unknown_algorithm_names_refused(
    tmp_path: Path, keystore_text: str, field: str, value: str
) -> None:
    # The file names its KDF and cipher; a reader that ignores those names would open a file
    # claiming another algorithm with its own, so tampering with them goes unnoticed.
    def change(document: dict) -> None:
        if field == "cipher":
            document["cipher"] = value
        else:
            document["kdf"]["name"] = value

    with pytest.raises(KeystoreError):
        load_identity(_write(tmp_path, _edit(keystore_text, change)), PASSPHRASE)


def _meaning(text: str) -> Any:
    """What a keystore says, independent of JSON layout and base64 spelling."""
    document = json.loads(text)
    meaning = json.loads(json.dumps(document))
    try:
        meaning["kdf"]["salt"] = base64.b64decode(document["kdf"]["salt"], validate=True)
        meaning["ciphertext"] = base64.b64decode(document["ciphertext"], validate=True)
    except (KeyError, TypeError, ValueError):
        return None
    return meaning


@settings(
    max_examples=20, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_any_tampered_byte(tmp_path: Path, keystore_text: str, data: st.DataObject) -> None:
    # The two algorithm-name members (key and value) are left to
    # test_unknown_algorithm_names_refused above, which shows they are not checked.
    spans = [
        (start, start + len(member))
        for member in ('"name": "argon2id"', '"cipher": "xsalsa20-poly1305"')
        for start in [keystore_text.index(member)]
    ]
    position = data.draw(st.integers(0, len(keystore_text) - 1), label="position")
    assume(not any(start <= position < end for start, end in spans))
    replacement = data.draw(st.characters(codec="ascii"), label="char")
    assume(replacement != keystore_text[position])
    tampered = keystore_text[:position] + replacement + keystore_text[position + 1:]
    try:
        unchanged = _meaning(tampered) == _meaning(keystore_text)
    except ValueError:
        unchanged = False  # no longer JSON: must be refused
    assume(not unchanged)  # whitespace changes say the same thing
    with pytest.raises(KeystoreError):
        load_identity(_write(tmp_path, tampered), PASSPHRASE)


MALFORMED = {
    "not-json": "this is not json",
    "empty": "",
    "json-list": "[]",
    "json-null": "null",
    "empty-object": "{}",
    "binary": "\x00\x01\x02",
}


@pytest.mark.parametrize("text", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_json(tmp_path: Path, text: str) -> None:
    with pytest.raises(KeystoreError):
        load_identity(_write(tmp_path, text), PASSPHRASE)


STRUCTURE = {
    "wrong-format": lambda d: d.update(format="other-wallet"),
    "wrong-version": lambda d: d.update(version=2),
    "kdf-missing": lambda d: d.pop("kdf"),
    "salt-missing": lambda d: d["kdf"].pop("salt"),
    "salt-not-base64": lambda d: d["kdf"].update(salt="***"),
    "salt-short": lambda d: d["kdf"].update(salt=base64.b64encode(bytes(8)).decode()),
    "ciphertext-missing": lambda d: d.pop("ciphertext"),
    "ciphertext-not-base64": lambda d: d.update(ciphertext="not base64!"),
    "ciphertext-number": lambda d: d.update(ciphertext=12345),
    "opslimit-text": lambda d: d["kdf"].update(opslimit="two"),
    "kdf-list": lambda d: d.update(kdf=[1, 2]),
}


@pytest.mark.parametrize("change", list(STRUCTURE.values()), ids=list(STRUCTURE))
def test_malformed_structure(tmp_path: Path, keystore_text: str, change: Any) -> None:
    with pytest.raises(KeystoreError):
        load_identity(_write(tmp_path, _edit(keystore_text, change)), PASSPHRASE)


KDF_RANGE = {
    "opslimit-below": ("opslimit", OPSLIMIT - 1),
    "opslimit-zero": ("opslimit", 0),
    "opslimit-above": ("opslimit", MAX_OPSLIMIT + 1),
    "opslimit-huge": ("opslimit", 2**62),
    "memlimit-below": ("memlimit", MEMLIMIT // 2),
    "memlimit-above": ("memlimit", MAX_MEMLIMIT * 2),
    "memlimit-negative": ("memlimit", -1),
}


@pytest.mark.parametrize(("name", "value"), list(KDF_RANGE.values()), ids=list(KDF_RANGE))
def test_kdf_params_out_of_range(
    tmp_path: Path, keystore_text: str, name: str, value: int
) -> None:
    changed = _edit(keystore_text, lambda d: d["kdf"].update({name: value}))
    with pytest.raises(KeystoreError, match="outside the accepted range"):
        load_identity(_write(tmp_path, changed), PASSPHRASE)


def _keystore_with_secret(tmp_path: Path, secret: dict[str, Any]) -> Path:
    return _write(tmp_path, json.dumps(encrypt_secret(secret, PASSPHRASE)))


@pytest.mark.parametrize(
    "secret",
    [
        {"profile": "intl"},
        {"profile": "eu", "ed25519_seed": SEED.hex()},
        {"profile": "intl", "ed25519_seed": SEED.hex()[:-2]},
        {"profile": "intl", "ed25519_seed": "zz" * 32},
        {"profile": "intl", "ed25519_seed": 12345},
    ],
    ids=["seed-missing", "unknown-profile", "seed-31-bytes", "seed-not-hex", "seed-number"],
)
def test_decrypted_contents_malformed(tmp_path: Path, secret: dict[str, Any]) -> None:
    with pytest.raises(KeystoreError, match="malformed"):
        load_identity(_keystore_with_secret(tmp_path, secret), PASSPHRASE)
