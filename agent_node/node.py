"""The node's Python API: what every ``sov-node`` command does, callable from Python.

    from agent_node.node import Node

    node = Node.open("/srv/sov-node", passphrase)
    report = node.sync()                      # SyncReport: per dataset, and removed ones
    node.bind("C-1042", "did:key:z6Mk...")    # Binding(subject_ref, in_datasets)
    node.grants(status="active")              # dicts, as `sov-node grants list --json`
    node.events(since=parse_bound("24h"))     # as `sov-node log events --json`
    node.push()                               # anchor the access-log heads now
    node.install_model(model, receipt, author)  # a registered intent model, for scoring
    running = node.serve()                    # gRPC + TLS until running.stop()

The command line is a thin layer over this class (agent_node.cli), the way consent-wallet is
over wallet.service.Wallet. Errors are the package's own (AgentNodeError and its kinds, one
sentence each); nothing here prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_node.errors import AgentNodeError
from agent_node.home import NodeConfig, NodeHome, init_home, load_home
from agent_node.vault import SyncStats, Vault, sync
from consent import timespec
from consent.did import resolve


@dataclass(frozen=True)
class SyncReport:
    """What one sync did: each dataset's counts and malformed rows, and the datasets still in
    the vault that the data map no longer has (name -> rows), ``dropped`` if deleted."""

    datasets: list[SyncStats]
    removed: dict[str, int] = field(default_factory=dict)
    dropped: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"datasets": [{**vars(s), "problems": list(s.problems)} for s in self.datasets],
                "removed_from_datamap": self.removed, "dropped": self.dropped}


@dataclass(frozen=True)
class Binding:
    """A customer bound to (or unbound from) a wallet DID; ``in_datasets`` names the synced
    datasets holding rows of that customer (none: most likely a mistyped id)."""

    subject_ref: str
    did: str
    bound: bool
    in_datasets: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"subject_ref": self.subject_ref, "did": self.did, "bound": self.bound,
                "in_datasets": self.in_datasets}


class Node:
    """An opened node home: its keys unlocked, its vault at hand."""

    def __init__(self, home: NodeHome, passphrase: str) -> None:
        self.home = home
        self._passphrase = passphrase  # rotate_key re-encrypts the new key with it
        self._vault: Vault | None = None

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, home: str | Path, passphrase: str) -> Node:
        """Unlock the node home at ``home`` (ConfigError / KeystoreError in one sentence)."""
        return cls(load_home(Path(home), passphrase), passphrase)

    @classmethod
    def init(cls, home: str | Path, passphrase: str, **settings: Any) -> Node:
        """Create a node home (``name``, ``region``, ``profile``, ``listen``, ``hostnames``)
        and open it; refuses an existing home or a passphrase under 12 characters."""
        made = init_home(Path(home), passphrase, **settings)
        return cls(made, passphrase)

    @property
    def vault(self) -> Vault:
        """The vault, opened on first use (``serve --workers`` forks before any SQLite
        connection exists, so opening a node must not open the vault)."""
        if self._vault is None:
            self._vault = Vault(self.home.vault_path, self.home.keys)
        return self._vault

    @property
    def did(self) -> str:
        return str(self.home.identity.did)

    @property
    def config(self) -> NodeConfig:
        return self.home.config

    # -- data -------------------------------------------------------------------------------------

    def sync(self, datasets: list[str] | None = None, *, drop_removed: bool = False,
             on_rows: Callable[[str, int], None] | None = None) -> SyncReport:
        """Copy the mapped source data into the vault (incremental; each dataset in one
        transaction, refused whole on a malformed row unless its ``on_bad_row = "skip"``)."""
        datamap = self.home.datamap()
        if not datamap.datasets:
            raise AgentNodeError(f"{self.home.datamap_path} maps no datasets: add a "
                                 "[datasets.NAME] table (see docs/operator.md, section 2)")
        done = sync(self.vault, datamap, datasets or None, on_rows=on_rows)
        removed = self.vault.removed_datasets(datamap)
        if drop_removed and removed:
            self.vault.drop_datasets(sorted(removed))
        return SyncReport(done, removed, drop_removed and bool(removed))

    def bind(self, customer: str | list[str], did: str) -> Binding:
        """Bind a customer (its subject key: one value, or a list for a composite key) to a
        wallet DID; the answer says which synced datasets hold that customer."""
        resolve(did)
        ref = self.vault.bind(_key(customer), did)
        return Binding(ref, did, True, self.vault.datasets_holding(ref))

    def unbind(self, customer: str | list[str], did: str) -> Binding:
        """Remove a binding; its grants stop covering the customer before the next answer."""
        return Binding(self.vault.unbind(_key(customer), did), did, False)

    def bindings(self) -> list[dict[str, str]]:
        """Every binding by subject reference (never a customer key)."""
        return self.vault.bindings()

    # -- consent and the access log ---------------------------------------------------------------

    def grants(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every grant the node holds (consent.grantstate words), optionally of one state."""
        from agent_node.grantstore import GrantStore

        settings = self.config.privacy_settings()
        store = GrantStore(self.vault, self.did, max_ttl=self.config.max_ttl,
                           clock_skew=self.config.clock_skew,
                           default_budget=settings.grant_budget if settings.dp else None)
        return [g for g in store.overview() if status is None or g["status"] == status]

    def events(self, since: timespec.TimeBound | None = None,
               until: timespec.TimeBound | None = None, limit: int = 100
               ) -> list[dict[str, Any]]:
        """Access events with the grants and customers they used, each checked against its
        Merkle roots (``sets_match``) and the hash chain (``chain_ok``)."""
        from agent_node.accesslog import operator_view
        from agent_node.vault import iso

        timespec.check_range(since, until)
        # The log keeps times to the second: whole-second bounds select since <= t < until.
        start = iso(timespec.ceil_second(since.start)) if since else None
        end = iso(timespec.ceil_second(until.end)) if until else None
        with self.vault.connection() as conn:
            return operator_view(conn, start, limit, until=end)

    def head(self) -> dict[str, Any]:
        """The node-signed access-log chain head."""
        from agent_node.accesslog import signed_head

        with self.vault.connection() as conn:
            return signed_head(conn, self.home.identity)

    def push(self) -> Any:
        """Anchor the current head and every queued one in the ledger now (a PushResult:
        ``anchored`` sequences, ``pending`` count, ``error`` if the ledger did not take them)."""
        from agent_node.server import LedgerPusher

        if not self.config.ledger_address:
            raise AgentNodeError("no ledger is configured: set ledger_address and ledger_ca in "
                                 "node.toml")
        pusher = LedgerPusher(self.home, self.vault)
        try:
            return pusher.push()
        finally:
            pusher.close()

    def receipts(self, out: Path) -> tuple[list[int], int]:
        """Write receipt-<sequence>.json for every anchored head into ``out``; (sequences
        written, heads still pending)."""
        import json

        from agent_node.accesslog import anchored_heads, queue_counts

        with self.vault.connection() as conn:
            heads = anchored_heads(conn)
            pending = queue_counts(conn)[1]
        out.mkdir(parents=True, exist_ok=True)
        for anchored in heads:
            (out / f"receipt-{anchored.sequence}.json").write_text(
                json.dumps(anchored.receipt, indent=2) + "\n", encoding="utf-8")
        return [h.sequence for h in heads], pending

    # -- intent models ----------------------------------------------------------------------------

    def install_model(self, model_file: Path, receipt_file: Path, author: str,
                      log_key_file: Path | None = None) -> tuple[Any, bool]:
        """Verify a model artifact against its ledger receipt (log key, inclusion, the
        ``model`` entry naming the file's digest, signed by ``author``) and install it for
        scored questions (``agent_node.scoring``); (InstalledModel, whether it is new)."""
        from agent_node import scoring

        return scoring.install(self.vault, self.home.datamap(), Path(model_file),
                               Path(receipt_file), self._log_key(log_key_file), author)

    def models(self) -> list[Any]:
        """The installed models (``InstalledModel``), oldest first."""
        from agent_node import scoring

        return list(scoring.installed(self.vault))

    def remove_model(self, digest: str) -> Any:
        """Uninstall a model: questions naming it are refused from now on."""
        from agent_node import scoring

        return scoring.remove(self.vault, digest)

    def _log_key(self, given: Path | None) -> Any:
        """The ledger's log key: the file given, else node.toml ``ledger_log_key``, else the
        one the node pinned on first contact with its ledger."""
        import json

        from agent_node.accesslog import get_setting
        from ledger.errors import LogKeyError
        from ledger.models import LogPublicKey

        try:
            if given is not None:
                return LogPublicKey.load(Path(given))
            if self.config.ledger_log_key:
                return LogPublicKey.load(self.home.resolve(self.config.ledger_log_key))
        except LogKeyError as exc:
            raise AgentNodeError(str(exc)) from None
        with self.vault.connection() as conn:
            pinned = get_setting(conn, "log_key")
        if pinned is None:
            raise AgentNodeError("this node knows no ledger log key: pass --log-key "
                                 "log-public.json or set ledger_log_key in node.toml")
        return LogPublicKey.from_json(json.loads(pinned))

    # -- identity and network ---------------------------------------------------------------------

    def identity_document(self) -> dict[str, Any]:
        """The node's signed identity document, for wallets to pin its DID ahead."""
        from consent.rotation import issue_node_document

        return issue_node_document(self.home.identity, name=self.config.name,
                                   region=self.config.region)

    def rotate_key(self) -> dict[str, Any]:
        """Give the node a new did:key signed over by the old one; the rotation statement."""
        from agent_node.home import rotate_identity

        statement = rotate_identity(self.home, self._passphrase)
        self.home = load_home(self.home.path, self._passphrase)
        self._vault = None
        return statement

    def register(self, coordinator: str, coordinator_ca: bytes, *,
                 endpoint: str | None = None) -> Any:
        """Register with a coordinator (a signed NodeRegistration with its key rotations)."""
        from agent_node.coordination import register

        return register(self.home, coordinator, coordinator_ca, endpoint=endpoint)

    def serve(self, address: str | None = None, *, primary: bool = True,
              reuse_port: bool = False) -> Any:
        """Serve the AgentNode gRPC API over TLS in this process until ``.stop()`` of the
        RunningNode returned (``address`` overrides node.toml's ``listen``; ``primary=False``
        and ``reuse_port`` for the extra worker processes of ``serve --workers``)."""
        from agent_node.server import start

        return start(self.home, address=address, primary=primary, reuse_port=reuse_port)

    def supernode(self, superlink: str, *, passphrase_file: Path | None = None,
                  min_customers: int | None = None) -> Any:
        """The Flower SuperNode that trains beside the service (``serve --fl``), not yet
        started: ``.supervise()`` starts it, ``.stop()`` stops it. Its ClientApps open the
        vault themselves, with ``passphrase_file`` or SOV_NODE_PASSPHRASE."""
        from agent_node.flnode import SuperNodeProcess

        if not self.config.coordinator_ca:
            raise AgentNodeError("--fl needs node.toml coordinator_ca (the coordinator's CA "
                                 "certificate) to check the SuperLink's TLS certificate")
        return SuperNodeProcess(self.home.path, superlink,
                                self.home.resolve(self.config.coordinator_ca),
                                passphrase_file=passphrase_file, min_customers=min_customers)

    # -- erasure and backups ----------------------------------------------------------------------

    def erase(self, request: dict[str, Any]) -> Any:
        """Carry out a customer's signed erasure request (``sov-node erase``): everything
        this node holds about them destroyed; the outcome with its signed proof."""
        from agent_node.erasure import Erasure

        erasure = Erasure(self.home, self.vault)
        outcome = erasure.erase(request)
        if erasure.sweep():  # the read of every file whole, here before the command returns
            outcome = erasure.outcome(outcome.proof["customer"])
        return outcome

    def backup(self, out: Path, *, progress: Callable[..., None] | None = None) -> Any:
        """Write an encrypted backup of the vault to ``out`` (``sov-node backup``); its
        BackupInfo. ``progress(label, n, total)`` hears of the work as it goes."""
        from agent_node.backup import backup

        return backup(self.home, Path(out), progress=progress)

    @staticmethod
    def backup_header(path: Path) -> dict[str, Any]:
        """A backup file's header (when it was made, by which node), read without the keys."""
        from agent_node.backup import read_header

        return read_header(Path(path))

    def restore(self, path: Path, *, progress: Callable[..., None] | None = None) -> Any:
        """Replace the vault's content with the backup at ``path`` (``sov-node restore``);
        its RestoreReport. Refused while ``sov-node serve`` runs on this home."""
        from agent_node.backup import restore

        self._vault = None  # the vault file is replaced: open it afresh afterwards
        return restore(self.home, Path(path), progress=progress)


def _key(customer: str | list[str]) -> list[str]:
    values = [customer] if isinstance(customer, str) else [str(v) for v in customer]
    if not values or any(not v for v in values):
        raise AgentNodeError("a customer key must name at least one non-empty value")
    return values


__all__ = ["Binding", "Node", "SyncReport"]
