"""The coordinator home: its did:key, TLS material and coordinator.toml (TOML v1.0).

    HOME/coordinator.key     the coordinator's Identity (did:key), encrypted (consent.keystore)
    HOME/coordinator.toml    settings under [coordinator], with sane defaults
    HOME/tls/                ca.pem, ca.key (0600), server.pem, server.key (0600); the server
                             certificate (its DID as a URI SAN) is also the client certificate
                             the coordinator presents to nodes (mutual TLS)
    HOME/registry.sqlite     the embedded registry (unless registry_dsn names PostgreSQL)
    HOME/ledger/             the hosted ledger's home (a ``sov-ledger`` home, the coordinator
                             its registered author), with ``init --host-ledger``

Nodes get ``tls/ca.pem`` to trust the coordinator (node.toml ``coordinator_ca``); requesters
and wallets get it to reach the coordinator.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import tomli_w

from consent.errors import KeystoreError
from consent.identity import Identity
from consent.keystore import load_identity, save_identity
from consent.passphrase import MIN_LENGTH
from consent.settingsfile import load_settings
from coordinator.errors import ConfigError
from protos.tls import create_ca, issue_server_certificate, write_private_pem

PASSPHRASE_ENV = "SOV_COORDINATOR_PASSPHRASE"
MIN_PASSPHRASE = MIN_LENGTH  # one rule for every tool (consent.passphrase)
KEY = "coordinator.key"
CONFIG = "coordinator.toml"


@dataclass
class CoordinatorConfig:
    name: str = "coordinator"
    listen: str = "127.0.0.1:7600"
    registry_dsn: str = ""              # empty: HOME/registry.sqlite; postgresql://... to share
    max_fanout: int = 32                # targets per Route call; more is refused
    default_deadline_ms: int = 5000     # per node, when the caller names none
    max_deadline_ms: int = 30000        # no caller may hold a node call longer
    health_interval_seconds: float = 10.0
    health_timeout_seconds: float = 2.0
    relay_retry_seconds: float = 10.0   # pending revocation relays are retried this often
    max_workers: int = 32
    metrics_port: int = 0               # 0 = no Prometheus endpoint
    metrics_address: str = "127.0.0.1"
    ledger_home: str = ""               # the hosted ledger's home, relative to this home

    def validate(self) -> CoordinatorConfig:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"coordinator.toml key 'listen': {self.listen[:80]!r} is not "
                              "HOST:PORT, e.g. 127.0.0.1:7600")
        if not 1 <= self.max_fanout <= 1024:
            raise ConfigError("coordinator.toml key 'max_fanout': must be 1 to 1024")
        if not 10 <= self.default_deadline_ms <= self.max_deadline_ms <= 600_000:
            raise ConfigError("coordinator.toml keys 'default_deadline_ms' <= 'max_deadline_ms' "
                              "must lie between 10 and 600000")
        if not 0.05 <= self.health_interval_seconds <= 3600:
            raise ConfigError("coordinator.toml key 'health_interval_seconds': 0.05 to 3600")
        if not 0.05 <= self.relay_retry_seconds <= 86400:
            raise ConfigError("coordinator.toml key 'relay_retry_seconds': 0.05 to 86400")
        if self.registry_dsn and not self.registry_dsn.startswith(("postgresql://",
                                                                   "postgres://")):
            raise ConfigError("coordinator.toml key 'registry_dsn': use a postgresql:// DSN, or "
                              "leave it empty for the embedded SQLite registry")
        return self


def load_config(path: Path) -> CoordinatorConfig:
    return load_settings(path, "coordinator", CoordinatorConfig, ConfigError,
                         missing="run 'sov-coordinator init' first",
                         unknown="see the README's coordinator guide").validate()


def save_config(home: Path, config: CoordinatorConfig) -> None:
    (Path(home) / CONFIG).write_text(tomli_w.dumps({"coordinator": asdict(config)}),
                                     encoding="utf-8")


@dataclass
class CoordinatorHome:
    path: Path
    config: CoordinatorConfig

    @property
    def tls_dir(self) -> Path:
        return self.path / "tls"

    @property
    def registry_path(self) -> Path:
        return self.path / "registry.sqlite"

    @property
    def ledger_path(self) -> Path | None:
        """The hosted ledger's home, or None when this coordinator hosts no ledger."""
        return self.path / self.config.ledger_home if self.config.ledger_home else None

    @property
    def registry_target(self) -> str:
        """The DSN, or the SQLite file path of the embedded registry."""
        return self.config.registry_dsn or str(self.registry_path)

    def ca_pem(self) -> bytes:
        return (self.tls_dir / "ca.pem").read_bytes()

    def server_tls(self) -> tuple[bytes, bytes]:
        """(cert, key) PEM: served to callers, and presented to nodes as the client cert."""
        return ((self.tls_dir / "server.pem").read_bytes(),
                (self.tls_dir / "server.key").read_bytes())

    def identity(self, passphrase: str) -> Identity:
        try:
            return load_identity(self.path / KEY, passphrase)
        except KeystoreError as exc:
            raise ConfigError(str(exc)) from None


def open_home(home: Path) -> CoordinatorHome:
    """A coordinator home's settings (no secret is decrypted)."""
    home = Path(home)
    if not (home / KEY).exists():
        raise ConfigError(f"{home} is not a coordinator home: run "
                          f"'sov-coordinator init --home {home}'")
    return CoordinatorHome(home, load_config(home / CONFIG))


def init_home(home: Path, passphrase: str, *, name: str = "coordinator",
              listen: str = "127.0.0.1:7600", registry_dsn: str = "",
              hostnames: list[str] | None = None,
              host_ledger: bool = False) -> tuple[CoordinatorHome, Identity]:
    """Create a coordinator home; refuses to overwrite one or to start with a weak passphrase."""
    home = Path(home)
    if (home / KEY).exists():
        raise ConfigError(f"{home} already holds a coordinator; use another --home")
    if len(passphrase) < MIN_PASSPHRASE:
        raise ConfigError(f"the passphrase must be at least {MIN_PASSPHRASE} characters: set "
                          f"{PASSPHRASE_ENV} or answer the prompt")
    # Validated before anything is written: a refused init leaves nothing behind.
    config = CoordinatorConfig(name=name, listen=listen, registry_dsn=registry_dsn).validate()
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    identity = Identity.generate()
    tls = home / "tls"
    tls.mkdir(exist_ok=True)
    ca = create_ca(f"{name} coordinator CA")
    server = issue_server_certificate(ca, hostnames or ["localhost"], uri_sans=[identity.did])
    (tls / "ca.pem").write_bytes(ca.cert_pem)
    write_private_pem(tls / "ca.key", ca.key_pem)
    (tls / "server.pem").write_bytes(server.cert_pem)
    write_private_pem(tls / "server.key", server.key_pem)
    if host_ledger:
        from coordinator.ledger_host import LEDGER_FOLDER, create

        create(home, name, identity, passphrase)
        config.ledger_home = LEDGER_FOLDER
    save_config(home, config)
    save_identity(home / KEY, identity, passphrase)  # last: its presence marks a complete home
    return CoordinatorHome(home, config), identity
