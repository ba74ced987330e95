"""Revocation relay: sealed Revoke requests kept until every node named has taken them.

A wallet hands the coordinator one sealed Revoke request per node holding the grant. They are
stored in the registry before anything is sent (so a crash loses nothing), forwarded with the
node's ``RelayRevoke`` (which waives the replay window: a revocation applied twice changes
nothing) and retried on a schedule, across the coordinator's restarts, until each node has
answered. A node still answers only from its own grants store, so a coordinator that drops a
revocation cannot keep a grant alive at a node the wallet reached directly.

The coordinator reads none of it: the envelopes are opaque, and the receipts the nodes return
are sealed to the wallet. Only bytes 1 and 2 of the header (the envelope's profile and, in gm,
its kind) are looked at: a gm revocation must open a session of its own (kind 1, its
SM2KeyBinding beside it), which the node opens whenever it arrives; one sealed inside a
session the node may have forgotten by the time of a retry is refused here, before anything
is kept.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from coordinator.errors import InvalidRequest
from coordinator.registry import PendingRelay, Registry
from coordinator.router import Router, Target
from protos.sovereign.v1 import coordinator_pb2 as pb

log = logging.getLogger("coordinator.relay")
PROFILE_GM = 2  # byte 1 of a gm envelope (node.proto)
GM_KIND_OPEN = 1  # byte 2 of a gm envelope that opens a session (node.proto)
# Refusals that will not change on a retry: the node read the revocation and said no.
FINAL_CODES = ("INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND",
               "FAILED_PRECONDITION")


class RelayService:
    """Stores, forwards and retries revocation relays; ``record`` notes each in the ledger
    (``coordinator.ledger_host.HostedLedger.record_relay``)."""

    def __init__(self, registry: Registry, router: Router, deadline: float, *,
                 record: Callable[[str, list[bytes], dict[str, str]], Any] | None = None
                 ) -> None:
        self.registry, self.router, self.deadline = registry, router, deadline
        self._record = record
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def relay(self, targets: list[Target]) -> tuple[str, list[pb.RelayResult]]:
        """Keep, then deliver once; the per-node results (pending ones are retried later)."""
        for target in targets:
            if len(target.envelope) > 2 and target.envelope[1] == PROFILE_GM and (
                    target.envelope[2] != GM_KIND_OPEN or not target.key_binding):
                raise InvalidRequest("a relayed gm revocation must open a session of its own "
                                     "and carry its SM2KeyBinding (the node may have closed "
                                     "any other session by the time of a retry); seal it "
                                     "with CoordinatorClient.relay_revocation")
        relay_id = f"urn:uuid:{uuid.uuid4()}"
        self.registry.add_relay(relay_id, [(t.node_did, t.envelope, t.key_binding)
                                           for t in targets])
        self.attempt(self.registry.pending_relays(relay_id))
        states = self.registry.relay_states(relay_id)
        if self._record is not None:
            self._record(relay_id, [t.envelope for t in targets],
                         {did: state for did, (state, _, _) in states.items()})
        return relay_id, [_result(t.node_did, states[t.node_did]) for t in targets]

    def attempt(self, pending: list[PendingRelay]) -> int:
        """Forward every pending delivery once; how many were closed."""
        if not pending:
            return 0
        records = self.registry.by_did(sorted({p.node_did for p in pending}))
        closed = 0
        for relay_id in dict.fromkeys(p.relay_id for p in pending):
            batch = [p for p in pending if p.relay_id == relay_id and p.node_did in records]
            outcomes = self.router.forward(
                "RelayRevoke", [Target(p.node_did, p.envelope, p.key_binding) for p in batch],
                records, self.deadline)
            for item, outcome in zip(batch, outcomes, strict=True):
                if outcome.outcome == "answered":
                    closed += self.registry.relay_done(relay_id, item.node_did, "delivered",
                                                       outcome.envelope)
                elif outcome.outcome == "refused" and outcome.code in FINAL_CODES:
                    closed += self.registry.relay_done(relay_id, item.node_did, "refused",
                                                       error=outcome.message)
                else:
                    self.registry.relay_failed(relay_id, item.node_did,
                                               outcome.message or outcome.outcome)
        return closed

    # -- retries ------------------------------------------------------------------------------

    def start(self, interval: float) -> None:
        self._thread = threading.Thread(target=self._run, args=(interval,), name="relay",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                closed = self.attempt(self.registry.pending_relays())
                if closed:
                    log.info(orjson.dumps({"event": "relay-delivered", "closed": closed}
                                          ).decode())
            except Exception as exc:  # the retry loop must outlive a registry outage; logged
                log.warning(orjson.dumps({"event": "relay-retry-failed",
                                          "error": type(exc).__name__}).decode())


def _result(did: str, state: tuple[str, bytes, str]) -> pb.RelayResult:
    name, receipt, error = state
    return pb.RelayResult(node_did=did, delivered=name == "delivered", state=name,
                          message=error, envelope=receipt if name == "delivered" else b"")
