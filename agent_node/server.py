"""Assemble and run an agent node: vault, grants store, query engine, gRPC service over TLS
(with grpc.health.v1 and server reflection via protos.transport), optional Prometheus
endpoint and optional anchoring of access-log heads in the hash ledger (RFC 9162 receipts,
``ledger.client``), through a durable queue so that a ledger outage never reaches a query.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import start_http_server

from agent_node import accesslog
from agent_node.engine import QueryEngine
from agent_node.errors import ConfigError
from agent_node.grantstore import GrantStore
from agent_node.home import NodeHome, hold_serving
from agent_node.service import SERVICE_NAME, Metrics, NodeService, add_to_server
from agent_node.vault import Vault, iso
from protos.transport import RunningServer, serve

log = logging.getLogger("agent_node.server")


@dataclass
class RunningNode:
    service: NodeService
    server: RunningServer
    stop_event: threading.Event
    coordinator_server: RunningServer | None = None  # the mutual-TLS port for the coordinator
    serving_lock: int | None = None  # HOME/serve.lock, held shared while serving

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self, grace: float = 1.0) -> None:
        self.stop_event.set()
        if self.coordinator_server is not None:
            self.coordinator_server.stop(grace)
        self.server.stop(grace)
        if self.serving_lock is not None:
            os.close(self.serving_lock)  # a restore may run now
            self.serving_lock = None


def build_service(home: NodeHome) -> NodeService:
    vault = Vault(home.vault_path, home.keys)
    datamap = home.datamap()
    config = home.config
    settings = config.privacy_settings()
    engine = QueryEngine(vault, datamap, home.identity.did, settings)
    grants = GrantStore(vault, home.identity.did, max_ttl=config.max_ttl,
                        clock_skew=config.clock_skew,
                        default_budget=settings.grant_budget if settings.dp else None)
    return NodeService(home, vault, engine, grants, Metrics())


@dataclass(frozen=True)
class PushResult:
    """What one push did: sequences newly anchored, heads still pending, and why if any."""

    anchored: list[int]
    pending: int
    error: str | None = None


class LedgerPusher:
    """Anchors the node's access-log heads in the hash ledger (docs/audit.md, access_head).

    Heads go through the durable queue in the vault (accesslog.ledger_heads): a head is queued
    in one transaction, pushed when the ledger answers, and its receipt is kept only after
    ``LedgerClient`` verified it (log-key signature, inclusion, the entry is ours, the log did
    not fork). Queries never wait for any of this: it runs on its own thread, and a ledger
    that is down only leaves heads queued until the next attempt.

    Each head is signed with the node's key as it is pushed (``ledger.authority.sign_entry``:
    Ed25519, deterministic, so a retry sends the same bytes); the ledger accepts it only while
    the operator has the node registered as an author (``sov-ledger authors add``), and a
    refusal leaves the heads queued like an outage does.
    """

    def __init__(self, home: NodeHome, vault: Vault, client: Any | None = None) -> None:
        self.home, self.vault = home, vault
        self._client = client

    def client(self) -> Any:
        if self._client is None:
            from ledger.client import LedgerClient

            config = self.home.config
            ca_pem = self.home.resolve(config.ledger_ca).read_bytes()
            self._client = LedgerClient(config.ledger_address, ca_pem, log_key=self._log_key(),
                                        timeout=10.0)
        return self._client

    def _log_key(self) -> Any:
        """The pinned log key: node.toml's file, else the one pinned in the vault, else None
        (the client then fetches it on first contact and ``_pin`` keeps it)."""
        from ledger.models import LogPublicKey

        if self.home.config.ledger_log_key:
            return LogPublicKey.load(self.home.resolve(self.home.config.ledger_log_key))
        with self.vault.connection() as conn:
            pinned = accesslog.get_setting(conn, "log_key")
        return LogPublicKey.from_json(json.loads(pinned)) if pinned else None

    def _pin(self, client: Any) -> None:
        with self.vault.connection() as conn:
            if accesslog.get_setting(conn, "log_key") is not None:
                return
        key = json.dumps(client.log_key.to_json(), sort_keys=True)
        with self.vault.transaction() as conn:
            accesslog.set_setting(conn, "log_key", key)
        log.info(json.dumps({"event": "ledger-key-pinned", "origin": client.log_key.origin}))

    def enqueue(self) -> int | None:
        """Queue the current head (once per head); durable before this returns.

        The event is built in a read snapshot and only inserted under the write lock, so the
        group-committed access-log appends of queries never wait for it.
        """
        with self.vault.snapshot() as conn:
            event = accesslog.head_event(conn, self.home.identity.did)
        if event is None:
            return None
        with self.vault.transaction() as conn:
            return accesslog.queue_head(conn, event)

    def flush(self) -> PushResult:
        """Push every queued head, oldest first, in batches; keep each verified receipt."""
        from ledger.authority import sign_entry
        from ledger.errors import LedgerError

        anchored: list[int] = []
        while True:
            with self.vault.connection() as conn:
                batch = accesslog.pending_heads(conn)
            if not batch:
                return PushResult(anchored, 0)
            try:
                client = self.client()
                identity = self.home.identity
                receipts = client.append_many([sign_entry(h.event, identity) for h in batch])
                self._pin(client)
            except (LedgerError, OSError) as exc:
                # Nothing is lost: the heads stay queued and the next push retries them.
                reason = _short(exc)
                with self.vault.transaction() as conn:
                    accesslog.mark_attempt_failed(conn, [h.sequence for h in batch], reason)
                    pending = accesslog.queue_counts(conn)[1]
                log.warning(json.dumps({"event": "ledger-push-failed", "pending": pending,
                                        "error": reason}))
                return PushResult(anchored, pending, reason)
            now = iso(datetime.now(UTC))
            with self.vault.transaction() as conn:
                for head, receipt in zip(batch, receipts, strict=True):
                    accesslog.store_receipt(conn, head.sequence, receipt.to_json(), now)
            anchored.extend(h.sequence for h in batch)
            log.info(json.dumps({"event": "ledger-anchored", "sequences": len(batch),
                                 "last": batch[-1].sequence, "index": receipts[-1].index}))

    def push(self) -> PushResult:
        self.enqueue()
        return self.flush()

    def run(self, stop: threading.Event) -> None:
        """Push on a schedule until ``stop`` is set; never raises (logs instead)."""
        interval = self.home.config.ledger_push_seconds
        while not stop.wait(interval):
            try:
                self.push()
            except Exception as exc:  # the pusher thread must outlive any bug; logged
                log.error(json.dumps({"event": "ledger-pusher-error",
                                      "error": type(exc).__name__}))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _short(exc: BaseException) -> str:
    """A one-line reason without customer data (ledger errors name checks and codes only)."""
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


def start(home: NodeHome, *, address: str | None = None, primary: bool = True,
          reuse_port: bool = False) -> RunningNode:
    """Serve ``home``. With several worker processes on one port (``sov-node serve
    --workers``) only the ``primary`` one exports metrics and anchors heads in the ledger."""
    # Held while serving: 'sov-node restore' refuses to replace the vault under a server.
    serving_lock = hold_serving(home.path, record_pid=primary)  # workers: the primary's pid
    if serving_lock is None:
        raise ConfigError("a restore is running on this node home: serve once it has "
                          "finished")
    from agent_node.backup import interrupted_restore

    interrupted = interrupted_restore(home.path)
    if interrupted is not None:
        os.close(serving_lock)
        raise ConfigError(f"a restore from {interrupted} stopped half-way (the activity "
                          "database and the vault are of different moments): run 'sov-node "
                          "restore' with that backup again, then serve")
    service = build_service(home)
    config = home.config
    if primary:
        from agent_node.erasure import Erasure

        # An erasure a crash interrupted is finished before anything else is served.
        Erasure(home, service.vault).resume()
    cert_pem, key_pem = home.server_tls()
    running = serve(add_to_server(service), [SERVICE_NAME], address=address or config.listen,
                    cert_pem=cert_pem, key_pem=key_pem,
                    max_message_bytes=config.max_message_bytes, max_workers=config.max_workers,
                    reuse_port=reuse_port)
    coordinator_server = None
    if config.coordinator_listen and primary:
        # The same service on a second port that admits only the coordinator's certificate
        # (mutual TLS); wallets and requesters keep using the first port.
        coordinator_server = serve(
            add_to_server(service), [SERVICE_NAME], address=config.coordinator_listen,
            cert_pem=cert_pem, key_pem=key_pem, max_message_bytes=config.max_message_bytes,
            max_workers=config.max_workers,
            client_ca_pem=home.resolve(config.coordinator_ca).read_bytes())
    stop = threading.Event()
    if config.metrics_port and primary:
        start_http_server(config.metrics_port, addr=config.metrics_address,
                          registry=service.metrics.registry)
    if config.ledger_address and primary:
        pusher = LedgerPusher(home, service.vault)
        threading.Thread(target=pusher.run, args=(stop,), name="ledger-pusher",
                         daemon=True).start()
    return RunningNode(service, running, stop, coordinator_server, serving_lock)
