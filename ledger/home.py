"""A ledger's home folder: configuration, the encrypted log key, the public key for auditors,
the SQLite database and the service's TLS material.

::

    HOME/ledger.json       origin, hash algorithm, crypto profile, anchoring settings
    HOME/log-key.json      the log's Ed25519 (+ SM2 in gm) key, encrypted (consent.keystore)
    HOME/log-public.json   LogPublicKey: what auditors pass to ``sov-audit --log-key``
    HOME/ledger.db         entries and signed tree heads (ledger.log)
    HOME/anchors.db        durable anchor queue and written anchors (ledger.anchor)
    HOME/anchor-key.json   optional: the operator's anchoring account, a v3 keystore (0600)
    HOME/authors.db        the parties allowed to write entries (ledger.authors)
    HOME/tls/              ca.pem, server.pem, server.key (0600)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consent.identity import Identity
from consent.keystore import load_identity, save_identity, write_private_file
from ledger.authors import AUTHORS, AuthorRegistry
from ledger.errors import LogKeyError, StorageError
from ledger.log import Log
from ledger.merkle import HASH_ALGORITHMS
from ledger.models import LogPublicKey
from ledger.note import Ed25519Signer, NoteSigner, SM2Signer

CONFIG = "ledger.json"
KEY = "log-key.json"
PUBLIC = "log-public.json"
DATABASE = "ledger.db"
ANCHORS = "anchors.db"
ANCHOR_KEY = "anchor-key.json"


@dataclass(frozen=True)
class LedgerConfig:
    origin: str
    hash_algorithm: str
    profile: str
    chain_rpc: str | None = None
    anchor_interval_seconds: float = 300.0
    anchor_chain_id: int | None = None  # with an anchor key: the only chain it may sign for

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def signers_for(identity: Identity, origin: str) -> list[NoteSigner]:
    """The note signers of a log key: Ed25519, plus SM2 in the gm profile."""
    signers: list[NoteSigner] = [Ed25519Signer(origin, identity.signing_key)]
    if identity.profile == "gm" and identity.sm2 is not None:
        signers.append(SM2Signer(origin, identity.sm2))
    return signers


def public_key_for(identity: Identity, origin: str, hash_algorithm: str) -> LogPublicKey:
    verifiers = [s.verifier().vkey() for s in signers_for(identity, origin)]  # type: ignore[attr-defined]
    return LogPublicKey(origin, hash_algorithm, tuple(verifiers))


def init_home(
    home: Path,
    *,
    origin: str,
    passphrase: str,
    profile: str = "intl",
    hash_algorithm: str | None = None,
    chain_rpc: str | None = None,
) -> LogPublicKey:
    """Create a new ledger home; refuses to overwrite an existing one."""
    home = Path(home)
    if (home / CONFIG).exists():
        raise StorageError(f"{home} already holds a ledger: choose an empty folder")
    if not origin or any(c.isspace() or c == "+" for c in origin):
        raise LogKeyError(
            "the origin must be non-empty, without spaces or '+', e.g. example.com/log"
        )
    algorithm = hash_algorithm or ("sm3" if profile == "gm" else "sha256")
    if algorithm not in HASH_ALGORITHMS:
        raise LogKeyError(f"unknown hash {algorithm!r}: use sha256 or sm3")
    home.mkdir(parents=True, exist_ok=True)
    identity = Identity.generate(profile)  # type: ignore[arg-type]
    save_identity(home / KEY, identity, passphrase)
    public = public_key_for(identity, origin, algorithm)
    (home / PUBLIC).write_text(json.dumps(public.to_json(), indent=2) + "\n", encoding="utf-8")
    _write_tls(home / "tls")
    save_config(home, LedgerConfig(origin, algorithm, profile, chain_rpc))
    return public


def _write_tls(folder: Path) -> None:
    from protos.tls import create_ca, issue_server_certificate

    ca = create_ca("Sovereign Fabric ledger CA")
    server = issue_server_certificate(ca, ["localhost", "127.0.0.1"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.pem").write_bytes(ca.cert_pem)
    (folder / "server.pem").write_bytes(server.cert_pem)
    write_private_file(folder / "server.key", server.key_pem)


def load_config(home: Path) -> LedgerConfig:
    path = Path(home) / CONFIG
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise StorageError(
            f"{home} is not a ledger home: run 'sov-ledger init --home {home}'"
        ) from exc
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {path}: it is not valid JSON") from exc
    try:
        return LedgerConfig(**doc)
    except TypeError as exc:
        raise StorageError(f"{path} has unknown or missing settings") from exc


def save_config(home: Path, config: LedgerConfig) -> None:
    text = json.dumps(config.to_json(), indent=2) + "\n"
    (Path(home) / CONFIG).write_text(text, encoding="utf-8")


def create_anchor_key(
    home: Path,
    passphrase: str,
    *,
    source: Path | None = None,
    source_passphrase: str | None = None,
    chain_id: int | None = None,
) -> str:
    """Create the home's anchoring account: a new key, or the key in ``source`` (a v3
    keystore opened with ``source_passphrase``, default ``passphrase``, or a hex key file).

    The key is stored encrypted under the ledger's passphrase; ``chain_id`` pins the chain it
    signs for. Returns the account's address, which the operator must fund.
    """
    from ledger.anchor import AnchorKey, read_private_key

    config = load_config(home)
    if chain_id is not None and chain_id <= 0:
        raise StorageError("the chain id must be a positive integer, e.g. 1 for Ethereum mainnet")
    key = AnchorKey(Path(home) / ANCHOR_KEY)
    if source is None:
        address = key.generate(passphrase)
    else:
        address = key.save(read_private_key(source, source_passphrase or passphrase), passphrase)
    if chain_id is not None:
        save_config(home, LedgerConfig(**{**config.to_json(), "anchor_chain_id": chain_id}))
    return address


def open_authors(home: Path) -> AuthorRegistry:
    """The authors registry of a ledger home (created empty on first use)."""
    load_config(home)  # a clear error if HOME is not a ledger home
    return AuthorRegistry(Path(home) / AUTHORS)


def open_log(home: Path, passphrase: str) -> Log:
    """Open the log of a ledger home, decrypting its key with ``passphrase``."""
    home = Path(home)
    config = load_config(home)
    identity = load_identity(home / KEY, passphrase)
    public = LogPublicKey.load(home / PUBLIC)
    if public != public_key_for(identity, config.origin, config.hash_algorithm):
        raise LogKeyError(f"{home / PUBLIC} does not match the log's private key")
    return Log(home / DATABASE, public, signers_for(identity, config.origin))
