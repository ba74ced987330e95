"""Assemble and run an agent node: vault, grants store, query engine, gRPC service over TLS
(with grpc.health.v1 and server reflection via protos.transport), optional Prometheus
endpoint and optional push of signed access-log heads to a ledger.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server

from agent_node import accesslog
from agent_node.engine import EngineSettings, QueryEngine
from agent_node.grantstore import GrantStore
from agent_node.home import NodeHome
from agent_node.service import SERVICE_NAME, Metrics, NodeService, add_to_server
from agent_node.vault import Vault
from protos.transport import RunningServer, serve

log = logging.getLogger("agent_node.server")
LEDGER_PUSH_SECONDS = 30.0


@dataclass
class RunningNode:
    service: NodeService
    server: RunningServer
    stop_event: threading.Event

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self, grace: float = 1.0) -> None:
        self.stop_event.set()
        self.server.stop(grace)


def build_service(home: NodeHome) -> NodeService:
    vault = Vault(home.vault_path, home.keys)
    datamap = home.datamap()
    config = home.config
    engine = QueryEngine(vault, datamap, home.identity.did,
                         EngineSettings(k=config.k, default_epsilon=config.default_epsilon))
    grants = GrantStore(vault, home.identity.did, max_ttl=config.max_ttl,
                        clock_skew=config.clock_skew)
    return NodeService(home, vault, engine, grants, Metrics())


def _push_heads(service: NodeService, stop: threading.Event) -> None:
    """Best effort: push the signed chain head when it moves; never blocks queries."""
    config = service.home.config
    try:
        from ledger.client import LedgerClient  # optional part, configured by [node] ledger_*
    except ImportError:
        log.warning('{"event": "ledger-unavailable"}')
        return
    ca = Path(config.ledger_ca).read_bytes() if config.ledger_ca else b""
    client: Any = LedgerClient(config.ledger_address, ca)
    last = None
    while not stop.wait(LEDGER_PUSH_SECONDS):
        with service.vault.connection() as conn:
            head = accesslog.signed_head(conn, service.identity)
        if head["hash"] == last:
            continue
        try:
            client.append({"type": "access_head", "head": head})
            last = head["hash"]
        except Exception as exc:  # the ledger being down must not stop the node
            log.warning('{"event": "ledger-push-failed", "error": "%s"}', type(exc).__name__)


def start(home: NodeHome, *, address: str | None = None) -> RunningNode:
    service = build_service(home)
    config = home.config
    cert_pem, key_pem = home.server_tls()
    running = serve(add_to_server(service), [SERVICE_NAME], address=address or config.listen,
                    cert_pem=cert_pem, key_pem=key_pem,
                    max_message_bytes=config.max_message_bytes, max_workers=config.max_workers)
    stop = threading.Event()
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_address,
                          registry=service.metrics.registry)
    if config.ledger_address:
        threading.Thread(target=_push_heads, args=(service, stop), daemon=True).start()
    return RunningNode(service, running, stop)
