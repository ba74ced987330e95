"""Passphrase-encrypted keystores on disk.

The passphrase is stretched with Argon2id (RFC 9106, libsodium's ``crypto_pwhash``) into a key for
XSalsa20-Poly1305 (NaCl ``secretbox``). The JSON envelope
records the KDF parameters so they can be raised later. Files are created 0600 and replaced
atomically, so a crash never leaves half a keystore.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from consent.errors import KeystoreError
from consent.identity import PROFILES, Identity

FORMAT = "sovereign-fabric-keystore"
VERSION = 1
# libsodium's "interactive" limits (64 MiB, ~0.1 s): every CLI command opens the keystore.
OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE
# Upper bounds, so that a planted keystore cannot make opening it exhaust the machine.
MAX_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE
MAX_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE


def _derive(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    if not passphrase:
        raise KeystoreError("the passphrase must not be empty")
    return nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, passphrase.encode("utf-8"), salt,
        opslimit=opslimit, memlimit=memlimit,
    )


def encrypt_secret(secret: dict[str, Any], passphrase: str) -> dict[str, Any]:
    """Encrypt a JSON-serialisable secret under a passphrase; returns the keystore document."""
    salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
    key = _derive(passphrase, salt, OPSLIMIT, MEMLIMIT)
    box = nacl.secret.SecretBox(key)
    ciphertext = box.encrypt(json.dumps(secret).encode("utf-8"))
    b64 = base64.b64encode
    return {
        "format": FORMAT,
        "version": VERSION,
        "kdf": {"name": "argon2id", "opslimit": OPSLIMIT, "memlimit": MEMLIMIT,
                "salt": b64(salt).decode()},
        "cipher": "xsalsa20-poly1305",
        "ciphertext": b64(bytes(ciphertext)).decode(),
    }


def decrypt_secret(document: dict[str, Any], passphrase: str) -> dict[str, Any]:
    try:
        if document.get("format") != FORMAT or document.get("version") != VERSION:
            raise KeystoreError("not a Sovereign Fabric keystore (unknown format or version)")
        kdf = document["kdf"]
        if kdf.get("name") != "argon2id" or document.get("cipher") != "xsalsa20-poly1305":
            raise KeystoreError("the keystore names a KDF or cipher this version does not use")
        salt = base64.b64decode(kdf["salt"], validate=True)
        ciphertext = base64.b64decode(document["ciphertext"], validate=True)
        opslimit, memlimit = int(kdf["opslimit"]), int(kdf["memlimit"])
        if not (OPSLIMIT <= opslimit <= MAX_OPSLIMIT and MEMLIMIT <= memlimit <= MAX_MEMLIMIT):
            raise KeystoreError("the keystore's KDF parameters are outside the accepted range")
        key = _derive(passphrase, salt, opslimit, memlimit)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise KeystoreError("the keystore file is damaged: a field is missing or bad") from exc
    try:
        plaintext = nacl.secret.SecretBox(key).decrypt(ciphertext)
    except nacl.exceptions.CryptoError as exc:
        raise KeystoreError(
            "cannot open the keystore: wrong passphrase, or the file was tampered with"
        ) from exc
    return json.loads(plaintext)


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_identity(path: Path, identity: Identity, passphrase: str) -> None:
    secret: dict[str, Any] = {
        "profile": identity.profile,
        "ed25519_seed": identity.signing_key.encode().hex(),
    }
    if identity.sm2 is not None:
        secret["sm2_private"] = identity.sm2.to_hex()
    document = encrypt_secret(secret, passphrase)
    write_private_file(Path(path), json.dumps(document, indent=2).encode("utf-8"))


def load_identity(path: Path, passphrase: str) -> Identity:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise KeystoreError(f"no keystore at {path}: create one first") from exc
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"the keystore at {path} is not readable JSON") from exc
    if not isinstance(document, dict):
        raise KeystoreError(f"the keystore at {path} is not a keystore document")
    secret = decrypt_secret(document, passphrase)
    try:
        profile = secret["profile"]
        if profile not in PROFILES:
            raise ValueError(profile)
        sm2 = None
        if "sm2_private" in secret:
            from consent.sm import SM2PrivateKey

            sm2 = SM2PrivateKey.from_hex(secret["sm2_private"])
        return Identity.from_seed(bytes.fromhex(secret["ed25519_seed"]), profile=profile, sm2=sm2)
    except (KeyError, TypeError, ValueError) as exc:
        raise KeystoreError("the keystore decrypted but its contents are malformed") from exc
