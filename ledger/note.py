"""Signed tree heads in the C2SP formats: tlog-checkpoint inside a signed-note.

- c2sp.org/tlog-checkpoint: the note text is the origin line, the tree size in decimal, the
  base64 root hash, then optional extension lines.
- c2sp.org/signed-note: the text, a blank line, then one line per signature,
  ``— <key name> base64(key ID || signature)``, with
  ``key ID = SHA-256(key name || 0x0A || type || public key)[:4]``.
  Ed25519 signatures use type ``0x01``. In the ``gm`` profile an SM2 (with SM3, GB/T 32918)
  signature line stands beside it, under type ``0xff`` followed by the identifier
  ``sm2-sm3`` as the spec recommends for types it does not assign.

Verifier keys are written in the ``<name>+<hex key ID>+<base64(type || public key)>`` form
used by the Go ``note`` package, so the Ed25519 key works with other tlog tooling.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import nacl.exceptions
import nacl.signing

from ledger.errors import CheckpointError, LogKeyError

ED25519_TYPE = b"\x01"
SM2_TYPE = b"\xffsm2-sm3"
MAX_SIGNATURES = 16
MAX_NOTE_BYTES = 16 * 1024


def key_id(name: str, sig_type: bytes, public_key: bytes) -> bytes:
    """The 4-byte key ID the signed-note spec recommends."""
    return hashlib.sha256(name.encode() + b"\n" + sig_type + public_key).digest()[:4]


def _check_key_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise LogKeyError(f"the key name {name!r} is empty or contains a space or '+'")


class NoteSigner(Protocol):
    @property
    def name(self) -> str: ...

    def key_id(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class NoteVerifier(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def sig_type(self) -> bytes: ...

    def key_id(self) -> bytes: ...

    def verify(self, message: bytes, signature: bytes) -> bool: ...

    def vkey(self) -> str: ...


@dataclass(frozen=True)
class Ed25519Signer:
    name: str
    signing_key: nacl.signing.SigningKey

    def key_id(self) -> bytes:
        return key_id(self.name, ED25519_TYPE, bytes(self.signing_key.verify_key))

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature

    def verifier(self) -> Ed25519Verifier:
        return Ed25519Verifier(self.name, bytes(self.signing_key.verify_key))


@dataclass(frozen=True)
class Ed25519Verifier:
    name: str
    public_key: bytes
    sig_type: bytes = ED25519_TYPE

    def key_id(self) -> bytes:
        return key_id(self.name, ED25519_TYPE, self.public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            nacl.signing.VerifyKey(self.public_key).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            return False
        return True

    def vkey(self) -> str:
        return _vkey(self.name, self.key_id(), ED25519_TYPE + self.public_key)


@dataclass(frozen=True)
class SM2Signer:
    """Signs with an SM2 private key from ``consent.sm`` (``.sign(data)``, ``.public_key()``)."""

    name: str
    private_key: Any

    def _public_bytes(self) -> bytes:
        return self.private_key.public_key().to_bytes()

    def key_id(self) -> bytes:
        return key_id(self.name, SM2_TYPE, self._public_bytes())

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def verifier(self) -> SM2Verifier:
        return SM2Verifier(self.name, self._public_bytes())


@dataclass(frozen=True)
class SM2Verifier:
    name: str
    public_key: bytes
    sig_type: bytes = SM2_TYPE

    def key_id(self) -> bytes:
        return key_id(self.name, SM2_TYPE, self.public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        from consent.errors import SignatureError
        from consent.sm import SM2KeyError, SM2PublicKey

        try:
            SM2PublicKey.from_bytes(self.public_key).verify(message, signature)
        except (SignatureError, SM2KeyError):
            return False
        return True

    def vkey(self) -> str:
        return _vkey(self.name, self.key_id(), SM2_TYPE + self.public_key)


def _vkey(name: str, kid: bytes, typed_key: bytes) -> str:
    return f"{name}+{kid.hex()}+{base64.b64encode(typed_key).decode()}"


def parse_vkey(vkey: str) -> NoteVerifier:
    """Parse ``<name>+<hex id>+<base64(type || key)>`` into a verifier, checking the ID."""
    try:
        name, kid_hex, b64 = vkey.split("+", 2)
        kid = bytes.fromhex(kid_hex)
        typed = base64.b64decode(b64, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise LogKeyError("a verifier key is not in the form name+keyid+base64key") from exc
    _check_key_name(name)
    verifier: NoteVerifier
    if typed[:1] == ED25519_TYPE and len(typed) == 33:
        verifier = Ed25519Verifier(name, typed[1:])
    elif typed.startswith(SM2_TYPE):
        verifier = SM2Verifier(name, typed[len(SM2_TYPE) :])
    else:
        raise LogKeyError("a verifier key has an unknown signature type or a wrong length")
    if verifier.key_id() != kid:
        raise LogKeyError(f"the verifier key {name!r} has a key ID that does not match its key")
    return verifier


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin, its size and its root (c2sp.org/tlog-checkpoint)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return "\n".join([*lines, *self.extensions]) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "" or any(line == "" for line in lines[:-1]):
            raise CheckpointError("the tree head is not a checkpoint: origin, size, root lines")
        origin, size_text, root_text, *extensions = lines[:-1]
        # isascii: str.isdigit also accepts digits such as "²" that int() refuses.
        if not (size_text.isascii() and size_text.isdigit()) or (
            size_text.startswith("0") and size_text != "0"
        ):
            raise CheckpointError("the tree head's size line is not a decimal number")
        try:
            root = base64.b64decode(root_text, validate=True)
        except binascii.Error as exc:
            raise CheckpointError("the tree head's root line is not base64") from exc
        return cls(origin, int(size_text), root, tuple(extensions))


def sign_note(text: str, signers: Sequence[NoteSigner]) -> str:
    """Return the signed note: text, blank line, one signature line per signer."""
    _check_note_text(text)
    message = text.encode()
    lines = []
    for signer in signers:
        blob = signer.key_id() + signer.sign(message)
        lines.append(f"\u2014 {signer.name} {base64.b64encode(blob).decode()}\n")
    return text + "\n" + "".join(lines)


def _check_note_text(text: str) -> None:
    if not text.endswith("\n"):
        raise CheckpointError("note text must end in a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise CheckpointError("note text must not contain control characters")


def open_note(note: str, verifiers: Sequence[NoteVerifier]) -> str:
    """Verify a signed note; return its text.

    Every verifier given must have a valid signature on the note (the log's Ed25519 key, and
    its SM2 key in the ``gm`` profile). Signatures by unknown keys are ignored, as the spec says.
    """
    if len(note.encode()) > MAX_NOTE_BYTES:
        raise CheckpointError("the signed tree head is larger than 16 KiB")
    sep = note.rfind("\n\n")
    if sep < 0:
        raise CheckpointError("the signed tree head has no blank line before its signatures")
    text, sig_block = note[: sep + 1], note[sep + 2 :]
    _check_note_text(text)
    if not sig_block.endswith("\n"):
        raise CheckpointError("the signed tree head's signature lines must end in a newline")
    sig_lines = sig_block[:-1].split("\n")
    if len(sig_lines) > MAX_SIGNATURES:
        raise CheckpointError("the signed tree head has more than 16 signatures")
    signatures = [_parse_signature_line(line) for line in sig_lines]
    message = text.encode()
    for verifier in verifiers:
        kid = verifier.key_id()
        mine = [sig for name, sig in signatures if name == verifier.name and sig[:4] == kid]
        if not mine:
            raise CheckpointError(f"the tree head is not signed by the log key {verifier.name!r}")
        if not all(verifier.verify(message, sig[4:]) for sig in mine):
            raise CheckpointError(
                f"the tree head's signature by {verifier.name!r} does not verify: the tree head "
                "was altered or was not signed by this log"
            )
    return text


def _parse_signature_line(line: str) -> tuple[str, bytes]:
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != "\u2014":
        raise CheckpointError("a signature line of the tree head is malformed")
    try:
        blob = base64.b64decode(parts[2], validate=True)
    except binascii.Error as exc:
        raise CheckpointError("a signature of the tree head is not base64") from exc
    if len(blob) < 5:
        raise CheckpointError("a signature of the tree head is too short")
    return parts[1], blob
