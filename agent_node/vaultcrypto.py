"""Key hierarchy of the vault: a node master key, per-subject SM4 data keys, keyed references.

- Master key: 32 random bytes, stored encrypted under the operator's passphrase
  (Argon2id + XSalsa20-Poly1305 via ``consent.keystore.encrypt_secret``).
- Sub-keys derived from it with HKDF-SHA256 (RFC 5869): one for opaque subject references
  and row ids (HMAC-SHA256, RFC 2104), one key-encryption key for wrapping data keys.
- Per-subject data keys: 16 random bytes (SM4, GB/T 32907) wrapped with SM4-GCM under the
  key-encryption key, bound to the subject reference as associated data. Destroying a
  subject's wrapped key makes every copy of its encrypted cells unreadable.
- Cells: SM4-GCM (nonce 12 random bytes || ciphertext || tag), associated data binds the
  cell to its dataset, column and row so that a ciphertext cannot be moved elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent_node.errors import VaultError
from consent.errors import ConsentError
from consent.sm import SM4GCM

NONCE_BYTES = 12
SM4_KEY_BYTES = 16


def _hkdf(master: bytes, label: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None,
                info=b"sovereign-fabric/agent-node/" + label).derive(master)


class VaultKeys:
    """Keys derived from the node master key. Never logged, never written in clear."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise VaultError("the master key must be 32 bytes")
        self._ref_key = _hkdf(master_key, b"subject-ref", 32)
        self._row_key = _hkdf(master_key, b"row-id", 32)
        self._kek = SM4GCM(_hkdf(master_key, b"data-key-wrap", SM4_KEY_BYTES))

    def subject_ref(self, key_values: list[Any]) -> str:
        """Opaque, stable reference of a subject key: keyed HMAC, so it cannot be guessed."""
        message = json.dumps([str(v) for v in key_values], ensure_ascii=False).encode()
        return hmac.new(self._ref_key, message, hashlib.sha256).hexdigest()[:32]

    def row_mac(self, payload: list[Any]) -> str:
        """Keyed digest of row content (row ids and change detection without clear values)."""
        message = json.dumps(payload, ensure_ascii=False, default=str).encode()
        return hmac.new(self._row_key, message, hashlib.sha256).hexdigest()[:32]

    def new_wrapped_data_key(self, subject_ref: str) -> tuple[bytes, bytes]:
        """A fresh SM4 data key and its wrapped form for storage."""
        data_key = os.urandom(SM4_KEY_BYTES)
        nonce = os.urandom(NONCE_BYTES)
        wrapped = nonce + self._kek.encrypt(nonce, data_key, b"dk|" + subject_ref.encode())
        return data_key, wrapped

    def unwrap_data_key(self, subject_ref: str, wrapped: bytes) -> bytes:
        try:
            return self._kek.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:],
                                     b"dk|" + subject_ref.encode())
        except (InvalidTag, ValueError, ConsentError) as exc:
            raise VaultError("a subject data key does not unwrap: wrong master key or "
                             "damaged vault") from exc

    def cell_cipher(self, data_key: bytes) -> SM4GCM:
        return SM4GCM(data_key)


def encrypt_cell(cipher: SM4GCM, value: Any, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + cipher.encrypt(nonce, json.dumps(value).encode(), aad)


def decrypt_cell(cipher: SM4GCM, blob: bytes, aad: bytes) -> Any:
    try:
        return json.loads(cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad))
    except (InvalidTag, ValueError, ConsentError) as exc:
        raise VaultError("an encrypted cell does not decrypt: damaged vault") from exc
