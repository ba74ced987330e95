"""Assemble and run a coordinator: registry, router with mutual TLS toward nodes, health
monitor, revocation relay retries, gRPC service over TLS (health checking and reflection via
``protos.transport``) and an optional Prometheus endpoint."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from prometheus_client import start_http_server

from consent.identity import Identity
from coordinator.home import CoordinatorHome
from coordinator.ledger_host import HostedLedger
from coordinator.registry import Registry
from coordinator.relay import RelayService
from coordinator.router import HealthMonitor, Router
from coordinator.service import SERVICE_NAME, CoordinatorService, Metrics, add_to_server
from protos.transport import RunningServer, serve


@dataclass
class RunningCoordinator:
    service: CoordinatorService
    server: RunningServer
    monitor: HealthMonitor
    relay: RelayService
    ledger: HostedLedger | None = None

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self, grace: float = 1.0) -> None:
        self.monitor.stop()
        self.relay.stop()
        self.server.stop(grace)
        if self.ledger is not None:
            self.ledger.stop()
        self.service.router.close()
        self.service.registry.close()


def start(home: CoordinatorHome, identity: Identity, passphrase: str, *,
          address: str | None = None) -> RunningCoordinator:
    """Serve ``home`` until stopped (with its hosted ledger on the same port, if any)."""
    config = home.config
    ledger = (HostedLedger(home.ledger_path, passphrase, identity)
              if home.ledger_path is not None else None)
    registry = Registry(home.registry_target)
    cert_pem, key_pem = home.server_tls()
    metrics = Metrics()
    router = Router(registry, (key_pem, cert_pem), on_outcome=None,
                    max_forwards=config.max_workers * config.max_fanout)
    relay = RelayService(registry, router, config.default_deadline_ms / 1000,
                         record=ledger.record_relay if ledger is not None else None)
    service = CoordinatorService(identity.did, config, registry, router, metrics, relay)

    def services(server: grpc.Server) -> None:
        add_to_server(service)(server)
        if ledger is not None:
            ledger.add_to(server)

    names = [SERVICE_NAME, *([HostedLedger.service_name] if ledger is not None else [])]
    running = serve(services, names, address=address or config.listen, cert_pem=cert_pem,
                    key_pem=key_pem, max_workers=config.max_workers)
    if ledger is not None:
        ledger.start()
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_address,
                          registry=metrics.registry)
    monitor = HealthMonitor(router, config.health_interval_seconds,
                            config.health_timeout_seconds)
    monitor.start()
    relay.start(config.relay_retry_seconds)  # also delivers what a previous run left pending
    return RunningCoordinator(service, running, monitor, relay, ledger)
