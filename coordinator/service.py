"""The ``sovereign.v1.Coordinator`` gRPC service (protos/sovereign/v1/coordinator.proto).

Registration verifies the node's signed statement (and the old key's rotation), then dials
the registered endpoint with mutual TLS and checks that the node answering there signs as the
registering DID; only then does the registry change. Route forwards sealed envelopes unread
(``coordinator.router``); refusals that concern the whole call (unknown node, too many
targets, bad method) are raised before anything is forwarded. Logs carry DIDs, methods,
codes and timings, never envelope bytes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from consent.errors import ConsentError
from consent.integrity import verify_document
from consent.registration import (
    Registration,
    RegistrationError,
    verify_registration,
)
from coordinator.errors import (
    InvalidRequest,
    NodeCheckFailed,
    RegistrationRefused,
    RegistryError,
    RequestError,
    UnknownNode,
)
from coordinator.home import CoordinatorConfig
from coordinator.registry import NodeRecord, Registry, now_iso
from coordinator.router import ROUTABLE, Outcome, Router, Target
from protos.sovereign.v1 import coordinator_pb2 as pb
from protos.sovereign.v1 import coordinator_pb2_grpc as pb_grpc
from protos.sovereign.v1 import node_pb2

VERSION = 1
SERVICE_NAME = "sovereign.v1.Coordinator"
MAX_STATEMENT_BYTES = 64 * 1024
MAX_ROTATIONS = 64
REGISTRATION_MAX_AGE = timedelta(minutes=10)
NODE_CHECK_TIMEOUT = 5.0
log = logging.getLogger("coordinator.service")


class Metrics:
    """Prometheus metrics in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("sov_coordinator_requests", "RPCs handled", ["method", "code"],
                                registry=self.registry)
        self.latency = Histogram("sov_coordinator_request_seconds", "RPC latency", ["method"],
                                 registry=self.registry)
        self.forwarded = Counter("sov_coordinator_forwarded", "envelopes forwarded to nodes",
                                 ["outcome"], registry=self.registry)
        self.node_latency = Histogram("sov_coordinator_node_seconds",
                                      "time from forwarding to a node's answer", ["outcome"],
                                      registry=self.registry)

        # The labelled children, looked up once per label values (a handful: methods, codes,
        # outcomes); labels() costs 3-6 us a call, and a 5-node Route made twelve.
        self._children: dict[tuple[str, ...], tuple[Any, Any]] = {}

    def request(self, method: str, code: str, seconds: float) -> None:
        children = self._children.get(("rpc", method, code))
        if children is None:
            children = self._children.setdefault(("rpc", method, code), (
                self.requests.labels(method, code), self.latency.labels(method)))
        children[0].inc()
        children[1].observe(seconds)

    def outcome(self, outcome: Outcome) -> None:
        children = self._children.get(("node", outcome.outcome))
        if children is None:
            children = self._children.setdefault(("node", outcome.outcome), (
                self.forwarded.labels(outcome.outcome),
                self.node_latency.labels(outcome.outcome)))
        children[0].inc()
        children[1].observe(outcome.elapsed_ms / 1000)


def _statement(raw: bytes, what: str) -> Any:
    if len(raw) > MAX_STATEMENT_BYTES:
        raise InvalidRequest(f"the {what} is larger than {MAX_STATEMENT_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidRequest(f"the {what} is not JSON; send the signed statement's canonical "
                             "JSON bytes") from None


class CoordinatorService(pb_grpc.CoordinatorServicer):
    def __init__(self, did: str, config: CoordinatorConfig, registry: Registry, router: Router,
                 metrics: Metrics, relay: Any = None) -> None:
        self.did, self.config, self.registry, self.router = did, config, registry, router
        self.metrics = metrics
        self.relay = relay  # coordinator.relay.RelayService, when revocation relay is on

    def _handle(self, method: str, context: grpc.ServicerContext,
                handler: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return handler()
        except RequestError as exc:
            code = exc.code
            context.abort(exc.code, str(exc))
        except RegistryError as exc:
            code = grpc.StatusCode.UNAVAILABLE
            context.abort(code, f"{exc}; nothing was changed, retry")
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.request(method, code.name, elapsed)
            if log.isEnabledFor(logging.INFO):
                log.info(orjson.dumps({"event": "rpc", "method": method, "code": code.name,
                                       "ms": round(elapsed * 1000, 2)}).decode())

    @staticmethod
    def _version(request: Any) -> None:
        if request.version != VERSION:
            raise InvalidRequest(f"unsupported message version {request.version}; set version "
                                 f"to {VERSION}")

    # -- Register -------------------------------------------------------------------------------

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext
                 ) -> pb.RegisterResponse:
        return self._handle("Register", context, lambda: self._register(request))

    def _register(self, request: pb.RegisterRequest) -> pb.RegisterResponse:
        self._version(request)
        try:
            registration = verify_registration(_statement(request.registration, "registration"))
        except RegistrationError as exc:
            raise RegistrationRefused(f"registration refused: {exc}") from None
        if abs(datetime.now(UTC) - registration.issued) > REGISTRATION_MAX_AGE:
            raise RegistrationRefused("registration refused: it was issued more than 10 minutes "
                                      "from now; sign a fresh one (sov-node register)")
        if len(request.rotations) > MAX_ROTATIONS:
            raise InvalidRequest(f"more than {MAX_ROTATIONS} key rotations; send the chain from "
                                 "the registered key only")
        rotations = [_statement(raw, "key rotation") for raw in request.rotations]
        self._check_node(registration)
        rotated = self.registry.register(registration, rotations)
        log.info(orjson.dumps({"event": "registered", "name": registration.name,
                               "did": registration.did, "rotated": rotated}).decode())
        return pb.RegisterResponse(version=VERSION, did=registration.did,
                                   name=registration.name, registered_at=now_iso(),
                                   rotated=rotated)

    def _check_node(self, registration: Registration) -> None:
        """The node at the endpoint must speak, over mutual TLS, as the registering DID."""
        record = NodeRecord(registration, "", "unknown", "", "")
        try:
            reply = self.router.channel(record).node.GetNodeInfo(
                node_pb2.NodeInfoRequest(version=1), timeout=NODE_CHECK_TIMEOUT)
            document = json.loads(reply.document)
            signer = verify_document(document, require_sm2=registration.profile == "gm")
        except grpc.RpcError as exc:
            raise NodeCheckFailed(
                f"the node at {registration.endpoint} did not answer over mutual TLS "
                f"({exc.code().name}); serve its coordinator port (node.toml coordinator_listen "
                "and coordinator_ca) and register that endpoint") from None
        except (ValueError, ConsentError):
            raise NodeCheckFailed(f"the node at {registration.endpoint} sent a NodeInfo that "
                                  "does not verify") from None
        if signer != registration.did or document.get("did") != registration.did:
            raise NodeCheckFailed(f"the node at {registration.endpoint} is {signer}, not the "
                                  f"registering DID {registration.did}; register from that node")

    # -- ListNodes / Status ---------------------------------------------------------------------

    def ListNodes(self, request: pb.ListNodesRequest, context: grpc.ServicerContext
                  ) -> pb.ListNodesResponse:
        def run() -> pb.ListNodesResponse:
            self._version(request)
            records = self.registry.nodes(dataset=request.dataset, regions=list(request.regions))
            return pb.ListNodesResponse(version=VERSION, nodes=[_entry(r) for r in records])
        return self._handle("ListNodes", context, run)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext
               ) -> pb.StatusResponse:
        def run() -> pb.StatusResponse:
            self._version(request)
            return pb.StatusResponse(version=VERSION,
                                     document=orjson.dumps(status_document(self)))
        return self._handle("Status", context, run)

    # -- Route ----------------------------------------------------------------------------------

    def Route(self, request: pb.RouteRequest, context: grpc.ServicerContext) -> pb.RouteResponse:
        return self._handle("Route", context, lambda: self._route(request, context))

    def _route(self, request: pb.RouteRequest, context: grpc.ServicerContext
               ) -> pb.RouteResponse:
        self._version(request)
        if request.method not in ROUTABLE:
            raise InvalidRequest(f"method {request.method[:40]!r} cannot be routed; use one of "
                                 f"{', '.join(ROUTABLE)}")
        targets = self.targets(request.targets)
        records = self.known(targets)
        outcomes = self.router.forward(request.method, targets, records,
                                       self._deadline(request.deadline_ms, context))
        for outcome in outcomes:
            self.metrics.outcome(outcome)
        return pb.RouteResponse(version=VERSION, results=[_result(o) for o in outcomes])

    def targets(self, raw: Any) -> list[Target]:
        """Checked targets: 1 to max_fanout, one per node."""
        if not raw:
            raise InvalidRequest("name at least one target node (node_did and its envelope)")
        if len(raw) > self.config.max_fanout:
            raise InvalidRequest(f"{len(raw)} targets exceed this coordinator's fan-out limit of "
                                 f"{self.config.max_fanout}; split the question into several "
                                 "calls")
        dids = [t.node_did for t in raw]
        if len(set(dids)) != len(dids):
            raise InvalidRequest("a node is named twice; send one envelope per node")
        if any(not t.envelope for t in raw):
            raise InvalidRequest("every target needs the envelope sealed to its node")
        return [Target(t.node_did, bytes(t.envelope), bytes(t.key_binding)) for t in raw]

    def known(self, targets: list[Target]) -> dict[str, NodeRecord]:
        records = self.registry.routes([t.node_did for t in targets])
        unknown = [t.node_did for t in targets if t.node_did not in records]
        if unknown:
            raise UnknownNode(f"{len(unknown)} target node(s) are not registered here "
                              f"({', '.join(d[:60] for d in unknown[:3])}); nothing was "
                              "forwarded: ask ListNodes for the registered nodes")
        return records

    def _deadline(self, deadline_ms: int, context: grpc.ServicerContext) -> float:
        wanted = deadline_ms or self.config.default_deadline_ms
        seconds = min(wanted, self.config.max_deadline_ms) / 1000
        remaining = context.time_remaining()
        if remaining is not None:
            # Leave the caller time to receive the reply that lists the late nodes.
            seconds = min(seconds, max(0.01, remaining - 0.05))
        return seconds

    # -- RelayRevocation ------------------------------------------------------------------------

    def RelayRevocation(self, request: pb.RelayRevocationRequest,
                        context: grpc.ServicerContext) -> pb.RelayRevocationResponse:
        def run() -> pb.RelayRevocationResponse:
            self._version(request)
            if self.relay is None:
                raise InvalidRequest("this coordinator does not relay revocations; send the "
                                     "revocation to each node directly")
            targets = self.targets(request.targets)
            self.known(targets)
            relay_id, results = self.relay.relay(targets)
            return pb.RelayRevocationResponse(version=VERSION, relay_id=relay_id,
                                              results=results)
        return self._handle("RelayRevocation", context, run)


def _entry(record: NodeRecord) -> pb.NodeEntry:
    return pb.NodeEntry(registration=json.dumps(record.registration.document).encode(),
                        health=record.health, last_contact=record.last_contact,
                        last_error=record.last_error)


def _result(outcome: Outcome) -> pb.RouteResult:
    return pb.RouteResult(node_did=outcome.node_did, outcome=outcome.outcome, code=outcome.code,
                          message=outcome.message, envelope=outcome.envelope,
                          elapsed_ms=round(outcome.elapsed_ms, 3))


def status_document(service: CoordinatorService) -> dict[str, Any]:
    records = service.registry.nodes()
    health: dict[str, int] = {}
    for record in records:
        health[record.health] = health.get(record.health, 0) + 1
    config = service.config
    return {"did": service.did, "name": config.name, "registry": service.registry.backend,
            "nodes": len(records), "health": health,
            "pending_relays": len(service.registry.pending_relays()),
            "max_fanout": config.max_fanout, "default_deadline_ms": config.default_deadline_ms,
            "max_deadline_ms": config.max_deadline_ms}


def add_to_server(service: CoordinatorService) -> Callable[[grpc.Server], None]:
    return lambda server: pb_grpc.add_CoordinatorServicer_to_server(service, server)

