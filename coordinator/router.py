"""Forwarding sealed envelopes to nodes, unread, over mutual TLS; health checks of nodes.

The router holds one mutual-TLS channel per node (the node's registered CA as trust root, the
coordinator's certificate as client certificate), forwards each target's envelope with its own
deadline and waits for all of them at once, so one slow or dead node costs at most its
deadline and never delays the others' answers past theirs. The envelopes stay opaque: this
module handles bytes and gRPC statuses only.

Each forward is a blocking call, made on the handler's own thread for a single target and on a
pool of forwarding threads for several (one thread per target, never queued, so a slow node
cannot hold another's call past its deadline). gRPC's futures were used before: each one
makes the channel start a thread of its own to poll for completions, which exits when the
channel's last call ends, so every Route started (and woke) one such thread per node asked;
profiled with py-spy, thread starts and their wake-ups were most of the coordinator's CPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.registry import NodeRecord, Registry
from protos.sovereign.v1 import node_pb2, node_pb2_grpc
from protos.transport import secure_channel

log = logging.getLogger("coordinator.router")
NODE_SERVICE = "sovereign.v1.AgentNode"
# The sealed AgentNode methods a caller may route (GetNodeInfo is unsealed: ask the node):
# every call a requester or a wallet makes, erasure and a migration's import included, so a
# node whose public port a customer cannot reach still serves their rights. Each is sealed to
# the node and checked there (the caller's signature, nonce and time); the coordinator cannot
# read, alter or replay any of them. RelayRevoke is the relay's own (coordinator.relay).
ROUTABLE = ("Query", "SubmitGrant", "Revoke", "GrantStatus", "ListAccessEvents", "Export",
            "Erase", "Import")
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE,)


@dataclass(frozen=True)
class Target:
    node_did: str
    envelope: bytes
    key_binding: bytes = b""


@dataclass(frozen=True)
class Outcome:
    """What became of one target: answered (``envelope`` is the node's sealed reply),
    refused (the node's status passed on), unreachable, deadline or offline."""

    node_did: str
    outcome: str
    code: str
    message: str
    envelope: bytes = b""
    elapsed_ms: float = 0.0


class _Channel:
    def __init__(self, record: NodeRecord, client_cert: tuple[bytes, bytes]) -> None:
        self.key = (record.registration.endpoint, record.registration.tls_ca)
        self.channel = secure_channel(record.registration.endpoint,
                                      record.registration.tls_ca.encode(), client_cert=client_cert)
        self.node = node_pb2_grpc.AgentNodeStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)


class Router:
    """Channels to registered nodes and the fan-out of sealed envelopes."""

    def __init__(self, registry: Registry, client_cert: tuple[bytes, bytes], *,
                 on_outcome: Callable[[Outcome], None] | None = None,
                 max_forwards: int = 32 * 32) -> None:
        self.registry = registry
        self._client_cert = client_cert  # (key PEM, cert PEM)
        self._channels: dict[str, _Channel] = {}
        self._lock = threading.Lock()
        self._on_outcome = on_outcome
        # As many threads as calls can be in flight at once (handler threads x fan-out
        # limit), so no forward ever waits for a thread; they are made only when needed.
        self._pool = futures.ThreadPoolExecutor(max_workers=max_forwards,
                                                thread_name_prefix="forward")

    def channel(self, record: NodeRecord) -> _Channel:
        """The node's channel; re-made when its registration names another endpoint or CA."""
        key = (record.registration.endpoint, record.registration.tls_ca)
        with self._lock:
            current = self._channels.get(record.did)
            if current is None or current.key != key:
                if current is not None:
                    current.channel.close()
                current = self._channels[record.did] = _Channel(record, self._client_cert)
            return current

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for channel in self._channels.values():
                channel.channel.close()
            self._channels.clear()

    # -- forwarding -----------------------------------------------------------------------------

    def forward(self, method: str, targets: list[Target], records: dict[str, NodeRecord],
                deadline: float) -> list[Outcome]:
        """Send every target's envelope at once; each waits at most ``deadline`` seconds."""
        started = time.perf_counter()
        calls: dict[int, tuple[Callable[..., Any], node_pb2.SealedRequest]] = {}
        outcomes: dict[int, Outcome] = {}
        for i, target in enumerate(targets):
            record = records[target.node_did]
            if record.health == "unreachable":
                outcomes[i] = Outcome(target.node_did, "offline", "UNAVAILABLE",
                                      f"node {record.name!r} failed its last health check "
                                      f"({record.last_error or 'no answer'}); not forwarded")
                continue
            calls[i] = (getattr(self.channel(record).node, method),
                        node_pb2.SealedRequest(version=1, envelope=target.envelope,
                                               key_binding=target.key_binding))
        if len(calls) == 1:
            # One node: on this thread, with no future or pool hand-off in the way.
            ((i, (stub, request)),) = calls.items()
            outcomes[i] = self._send(targets[i], records[targets[i].node_did], stub, request,
                                     deadline, started)
        else:
            pending = {i: self._pool.submit(self._send, targets[i],
                                            records[targets[i].node_did], stub, request,
                                            deadline, started)
                       for i, (stub, request) in calls.items()}
            outcomes.update((i, future.result()) for i, future in pending.items())
        ordered = [outcomes[i] for i in range(len(targets))]
        if self._on_outcome:
            for outcome in ordered:
                self._on_outcome(outcome)
        return ordered

    def _send(self, target: Target, record: NodeRecord, stub: Callable[..., Any],
              request: node_pb2.SealedRequest, deadline: float, started: float) -> Outcome:
        """One blocking forward; its outcome, timed when this node's answer came back."""
        try:
            reply = stub(request, timeout=deadline)
        except grpc.RpcError as exc:
            elapsed = (time.perf_counter() - started) * 1000
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return Outcome(target.node_did, "deadline", code.name,
                               f"node {record.name!r} did not answer within the deadline",
                               elapsed_ms=elapsed)
            if code in UNREACHABLE:
                self._mark(record, "unreachable", exc.details() or code.name)
                return Outcome(target.node_did, "unreachable", code.name,
                               f"node {record.name!r} at {record.registration.endpoint} is "
                               "unreachable", elapsed_ms=elapsed)
            # The node's own refusal (replayed envelope, no grant, ...): passed on verbatim.
            return Outcome(target.node_did, "refused", code.name, exc.details() or "",
                           elapsed_ms=elapsed)
        elapsed = (time.perf_counter() - started) * 1000
        return Outcome(target.node_did, "answered", "OK", "", reply.envelope, elapsed)

    def _mark(self, record: NodeRecord, health: str, error: str) -> None:
        try:
            self.registry.set_health(record.did, health, error)
        except Exception as exc:  # the answer to the caller matters more than the mark
            log.warning(orjson.dumps({"event": "health-mark-failed",
                                      "error": type(exc).__name__}).decode())

    # -- health ---------------------------------------------------------------------------------

    def check(self, record: NodeRecord, timeout: float) -> tuple[str, str]:
        """(health, error) of one node from grpc.health.v1 over its mutual-TLS channel."""
        try:
            reply = self.channel(record).health.Check(
                health_pb2.HealthCheckRequest(service=NODE_SERVICE), timeout=timeout)
        except grpc.RpcError as exc:
            return "unreachable", f"{exc.code().name}: {(exc.details() or '')[:200]}"
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return "serving", ""
        return "not-serving", health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def check_all(self, timeout: float) -> dict[str, str]:
        """Check every registered node at once and record the results; {did: health}."""
        records = self.registry.nodes()
        if not records:
            return {}
        with futures.ThreadPoolExecutor(max_workers=min(16, len(records))) as pool:
            results = list(pool.map(lambda r: self.check(r, timeout), records))
        for record, (health, error) in zip(records, results, strict=True):
            self.registry.set_health(record.did, health, error)
        return {r.did: h for r, (h, _) in zip(records, results, strict=True)}


class HealthMonitor:
    """Checks every node on a schedule until stopped; never raises (logs instead)."""

    def __init__(self, router: Router, interval: float, timeout: float) -> None:
        self.router, self.interval, self.timeout = router, interval, timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            try:
                self.router.check_all(self.timeout)
            except Exception as exc:  # the monitor must outlive a registry outage; logged
                log.warning(orjson.dumps({"event": "health-check-failed",
                                          "error": type(exc).__name__}).decode())
            if self._stop.wait(self.interval):
                return
