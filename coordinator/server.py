"""Assemble and run a coordinator: registry, router with mutual TLS toward nodes, health
monitor, revocation relay retries, gRPC service over TLS (health checking and reflection via
``protos.transport``) and an optional Prometheus endpoint."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import start_http_server

from coordinator.home import CoordinatorHome
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

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self, grace: float = 1.0) -> None:
        self.monitor.stop()
        self.relay.stop()
        self.server.stop(grace)
        self.service.router.close()
        self.service.registry.close()


def start(home: CoordinatorHome, did: str, *, address: str | None = None) -> RunningCoordinator:
    """Serve ``home`` until stopped."""
    config = home.config
    registry = Registry(home.registry_target)
    cert_pem, key_pem = home.server_tls()
    metrics = Metrics()
    router = Router(registry, (key_pem, cert_pem), on_outcome=None)
    relay = RelayService(registry, router, config.default_deadline_ms / 1000)
    service = CoordinatorService(did, config, registry, router, metrics, relay)
    running = serve(add_to_server(service), [SERVICE_NAME], address=address or config.listen,
                    cert_pem=cert_pem, key_pem=key_pem, max_workers=config.max_workers)
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_address,
                          registry=metrics.registry)
    monitor = HealthMonitor(router, config.health_interval_seconds,
                            config.health_timeout_seconds)
    monitor.start()
    relay.start(config.relay_retry_seconds)  # also delivers what a previous run left pending
    return RunningCoordinator(service, running, monitor, relay)
