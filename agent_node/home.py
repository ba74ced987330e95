"""The node home: keys, TLS material, node.toml (TOML v1.0) and the encrypted master key.

    HOME/node.key        node Identity (Ed25519 did:key; SM2 too in the gm profile), encrypted
                         with Argon2id + XSalsa20-Poly1305 (consent.keystore)
    HOME/master.key      32-byte vault master key, encrypted the same way
    HOME/tls/            ca.pem, ca.key (0600), server.pem, server.key (0600)
    HOME/node.toml       settings with sane defaults
    HOME/datamap.toml    the data map (a commented template at first)
    HOME/vault.sqlite    the vault
    HOME/activity.sqlite what every query writes: access log, budgets used, nonces, releases
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import tomli_w

from agent_node.datamap import TEMPLATE, DataMap, load_datamap
from agent_node.engine import EngineSettings
from agent_node.errors import ConfigError
from agent_node.vaultcrypto import VaultKeys
from consent.errors import KeystoreError
from consent.identity import Identity
from consent.keystore import (
    decrypt_secret,
    encrypt_secret,
    load_identity,
    save_identity,
    write_private_file,
)
from consent.passphrase import MIN_LENGTH
from consent.settingsfile import load_settings
from protos.tls import create_ca, issue_server_certificate, write_private_pem

PASSPHRASE_ENV = "SOV_NODE_PASSPHRASE"


@dataclass
class NodeConfig:
    name: str = "node"
    region: str = "unspecified"
    residency: str = "Customer data stays on this node's premises; only aggregates leave."
    profile: str = "intl"
    listen: str = "127.0.0.1:7443"
    k: int = 5
    max_ttl_hours: int = 72
    clock_skew_seconds: int = 300
    replay_window_seconds: int = 300
    max_message_bytes: int = 4 * 1024 * 1024
    max_report_queries: int = 32   # queries one sealed report may carry (consent.protocol)
    privacy: str = "dp"            # "dp": differential privacy | "threshold": k only (weaker)
    default_epsilon: float = 1.0   # dp: a query's epsilon when the requester names none
    epsilon_min: float = 0.05      # dp: the smallest epsilon a requester may ask per query
    epsilon_max: float = 2.0       # dp: the largest
    grant_budget: float = 10.0     # dp: budget of a grant whose wallet set no --dp-epsilon
    dp_delta: float = 1e-9         # dp: delta per answer that selects undeclared group keys
    max_workers: int = 16
    metrics_port: int = 0          # 0 = no Prometheus endpoint
    metrics_address: str = "127.0.0.1"
    ledger_address: str = ""       # optional: anchor access-log heads in a ledger (HOST:PORT)
    ledger_ca: str = ""            # the ledger's TLS CA (PEM); relative to the node home
    ledger_log_key: str = ""       # the log's public key (log-public.json), got out of band;
    #                                empty: fetched on first contact and pinned in the vault
    ledger_push_seconds: float = 30.0
    gm_sm2_answer_proofs: bool = False  # gm: SM2 proof on every Query answer too (one SM2
    #                                     signature per query; off keeps SM2 off the hot path)
    coordinator_listen: str = ""   # optional: a second port, mutual TLS, for the coordinator
    coordinator_ca: str = ""       # the coordinator's TLS CA (PEM) its client certificate must
    #                                chain to; relative to the node home
    erasure_scan: str = "pages"    # "pages": an erasure's proof scans every other file of the
    #                                home whole and the vault at the pages its deletion
    #                                rewrote and the free pages; a sweep of every file whole
    #                                follows off the request. "full": the proof's scan reads
    #                                the whole vault too (its time grows with the vault)

    @property
    def max_ttl(self) -> timedelta:
        return timedelta(hours=self.max_ttl_hours)

    @property
    def clock_skew(self) -> timedelta:
        return timedelta(seconds=self.clock_skew_seconds)

    @property
    def replay_window(self) -> timedelta:
        return timedelta(seconds=self.replay_window_seconds)

    def validate(self) -> NodeConfig:
        check_listen(self.listen, "node.toml key 'listen'")
        if self.k < 2:
            raise ConfigError("node.toml key 'k': must be at least 2 (small groups re-identify)")
        if not 1 <= self.max_ttl_hours <= 72:
            raise ConfigError("node.toml key 'max_ttl_hours': must be between 1 and 72")
        if self.profile not in ("intl", "gm"):
            raise ConfigError("node.toml key 'profile': must be 'intl' or 'gm'")
        if not 1024 <= self.max_message_bytes <= 64 * 1024 * 1024:
            raise ConfigError("node.toml key 'max_message_bytes': must be 1 KiB to 64 MiB")
        if not 1 <= self.max_report_queries <= 256:
            raise ConfigError("node.toml key 'max_report_queries': must be 1 to 256")
        if self.replay_window_seconds < 10:
            raise ConfigError("node.toml key 'replay_window_seconds': must be at least 10")
        self.privacy_settings()
        if not 0.1 <= self.ledger_push_seconds <= 86400:
            raise ConfigError("node.toml key 'ledger_push_seconds': must be 0.1 to 86400")
        if bool(self.coordinator_listen) != bool(self.coordinator_ca):
            raise ConfigError("node.toml keys 'coordinator_listen' and 'coordinator_ca' go "
                              "together: the coordinator port admits only clients whose "
                              "certificate chains to coordinator_ca")
        if self.coordinator_listen:
            check_listen(self.coordinator_listen, "node.toml key 'coordinator_listen'")
        if self.erasure_scan not in ("pages", "full"):
            raise ConfigError("node.toml key 'erasure_scan': must be \"pages\" (the vault "
                              "pages an erasure rewrote and the free ones, then a sweep) or "
                              "\"full\" (the whole vault in the proof's scan)")
        if self.ledger_address and not self.ledger_ca:
            raise ConfigError("node.toml key 'ledger_ca': set it to the ledger's CA certificate "
                              "(PEM) when 'ledger_address' is set")
        return self


    def privacy_settings(self) -> EngineSettings:
        """The query engine's settings from this config; ConfigError names a bad key."""
        if self.privacy not in ("dp", "threshold"):
            raise ConfigError("node.toml key 'privacy': must be \"dp\" (differential privacy, "
                              "the default) or \"threshold\" (k-suppression only, weaker)")
        try:
            return EngineSettings(k=self.k, default_epsilon=self.default_epsilon,
                                  privacy=self.privacy, epsilon_min=self.epsilon_min,
                                  epsilon_max=self.epsilon_max, grant_budget=self.grant_budget,
                                  delta=self.dp_delta)
        except ValueError as exc:
            raise ConfigError(f"node.toml privacy settings: {exc} (keys default_epsilon, "
                              "epsilon_min, epsilon_max, grant_budget, dp_delta)") from None


def check_listen(address: str, what: str = "listen address") -> str:
    """``address`` if it is HOST:PORT with a port 0-65535, else ConfigError.

    gRPC would take port 99999 modulo 65536 and serve somewhere nobody asked for.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{what}: {address[:80]!r} is not HOST:PORT with a port 0-65535, "
                          "e.g. 127.0.0.1:7443 or [::]:7443")
    return address


def load_config(path: Path) -> NodeConfig:
    return load_settings(path, "node", NodeConfig, ConfigError, missing="run 'sov-node init' first",
                         unknown="see docs/operator.md").validate()


@dataclass
class NodeHome:
    path: Path
    identity: Identity
    keys: VaultKeys
    config: NodeConfig

    @property
    def tls_dir(self) -> Path:
        return self.path / "tls"

    @property
    def vault_path(self) -> Path:
        return self.path / "vault.sqlite"

    @property
    def datamap_path(self) -> Path:
        return self.path / "datamap.toml"

    def datamap(self) -> DataMap:
        return load_datamap(self.datamap_path)

    def server_tls(self) -> tuple[bytes, bytes]:
        return ((self.tls_dir / "server.pem").read_bytes(),
                (self.tls_dir / "server.key").read_bytes())

    def ca_pem(self) -> bytes:
        return (self.tls_dir / "ca.pem").read_bytes()

    def resolve(self, configured: str) -> Path:
        """A path from node.toml: absolute, or relative to the node home."""
        return self.path / Path(configured).expanduser()


MIN_PASSPHRASE = MIN_LENGTH  # one rule for every tool (consent.passphrase)


def init_home(home: Path, passphrase: str, *, name: str = "node", region: str = "unspecified",
              profile: str = "intl", listen: str = "127.0.0.1:7443",
              hostnames: list[str] | None = None) -> NodeHome:
    """Create a node home; refuses to overwrite an existing one."""
    home = Path(home)
    if (home / "node.key").exists():
        raise ConfigError(f"{home} already holds a node; use another --home or remove it")
    if len(passphrase) < MIN_PASSPHRASE:
        # It alone protects the node's keys and the vault master key at rest.
        raise ConfigError(f"the passphrase must be at least {MIN_PASSPHRASE} characters: set "
                          f"{PASSPHRASE_ENV} or answer the prompt")
    # Checked before anything is written: a refused init must leave no half-made home behind.
    config = NodeConfig(name=name, region=region, profile=profile, listen=listen).validate()
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    identity = Identity.generate(profile)  # type: ignore[arg-type]
    save_identity(home / "node.key", identity, passphrase)
    master = os.urandom(32)
    write_private_file(home / "master.key", json.dumps(
        encrypt_secret({"master_key": master.hex()}, passphrase)).encode())
    tls = home / "tls"
    tls.mkdir(exist_ok=True)
    ca = create_ca(f"{name} node CA")
    server = issue_server_certificate(ca, hostnames or ["localhost"], uri_sans=[identity.did])
    (tls / "ca.pem").write_bytes(ca.cert_pem)
    write_private_pem(tls / "ca.key", ca.key_pem)
    (tls / "server.pem").write_bytes(server.cert_pem)
    write_private_pem(tls / "server.key", server.key_pem)
    save_config(home / "node.toml", config)
    if not (home / "datamap.toml").exists():
        (home / "datamap.toml").write_text(TEMPLATE, encoding="utf-8")
    return NodeHome(home, identity, VaultKeys(master), config)


def save_config(path: Path, config: NodeConfig) -> None:
    Path(path).write_text(tomli_w.dumps({"node": asdict(config)}), encoding="utf-8")


ROTATIONS_FILE = "rotations.json"


def rotations(home: Path) -> list[dict[str, Any]]:
    """The node's key rotation statements, oldest first (served in NodeInfo)."""
    path = Path(home) / ROTATIONS_FILE
    if not path.exists():
        return []
    try:
        statements = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise ConfigError(f"{path} is not JSON: restore it from a backup") from None
    if not isinstance(statements, list):
        raise ConfigError(f"{path} must hold a JSON list of key rotation statements")
    return statements


def rotate_identity(node: NodeHome, passphrase: str) -> dict[str, Any]:
    """Give the node a new did:key, signed over by the old one (``consent.rotation``).

    The statement is appended to ``rotations.json`` first and the new key written after, each
    atomically: a crash in between leaves the old key in place and a statement naming a key
    nobody holds, which wallets follow to a DID the node never presents (harmless). The old
    key is kept, encrypted, as ``node.key.retired-N`` for the record; it signs nothing more.
    """
    from consent.rotation import issue_rotation

    new = Identity.generate(node.config.profile)  # type: ignore[arg-type]
    statement = issue_rotation(node.identity, new.did)
    statements = [*rotations(node.path), statement]
    write_private_file(node.path / ROTATIONS_FILE, json.dumps(statements, indent=2).encode())
    retired = node.path / f"node.key.retired-{len(statements)}"
    retired.write_bytes((node.path / "node.key").read_bytes())
    os.chmod(retired, 0o600)
    save_identity(node.path / "node.key", new, passphrase)
    node.identity = new
    return statement


def load_home(home: Path, passphrase: str) -> NodeHome:
    """Open a node home (decrypting the node key and the master key)."""
    home = Path(home)
    if not (home / "node.key").exists():
        raise ConfigError(f"{home} is not a node home: run 'sov-node init --home {home}'")
    config = load_config(home / "node.toml")
    try:
        identity = load_identity(home / "node.key", passphrase)
        secret = decrypt_secret(json.loads((home / "master.key").read_text()), passphrase)
        master = bytes.fromhex(secret["master_key"])
    except KeystoreError as exc:
        raise ConfigError(str(exc)) from None
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"{home / 'master.key'} is damaged or missing") from None
    return NodeHome(home, identity, VaultKeys(master), config)


SERVE_LOCK = "serve.lock"


def hold_serving(home: Path, *, record_pid: bool = True) -> int | None:
    """Mark the node home as served for as long as this process lives (a shared ``flock`` on
    HOME/serve.lock: several serves and their workers share it; with ``record_pid``, the
    file names this process, the one an operator started); the held file descriptor, or
    None when a restore holds the home (``hold_exclusive``)."""
    fd = os.open(Path(home) / SERVE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if record_pid:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def hold_exclusive(home: Path) -> int | str:
    """The node home to this process alone (a restore): the held file descriptor, or, when
    a ``sov-node serve`` holds it, that server's pid as text ("" if unknown). The lock goes
    with the process, or with ``os.close`` of the descriptor."""
    fd = os.open(Path(home) / SERVE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        return pid if pid.isdigit() else ""
    return fd


def _register_locations() -> None:
    """The home's own files in the data-location registry (agent_node.locations): keys,
    certificates and settings, nothing about customers."""
    from agent_node import locations

    owner = "agent_node.home"
    for name, pattern in (("node-key", "node.key"), ("retired-keys", "node.key.retired-*"),
                          ("master-key", "master.key"), ("tls", "tls/*"),
                          ("config", "node.toml"), ("datamap", "datamap.toml"),
                          ("rotations", ROTATIONS_FILE), ("serve-lock", SERVE_LOCK)):
        locations.file(name, owner, pattern, "", "none")


_register_locations()
