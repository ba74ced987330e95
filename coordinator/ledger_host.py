"""The hash ledger hosted by the coordinator: ``ledger.service`` on the coordinator's port.

No second log: the ledger home (``HOME/ledger``, made by ``sov-coordinator init
--host-ledger`` with ``ledger.home.init_home``) is served by ``ledger.service.LedgerServicer``
with its authors registry and the anchor scheduler of ``ledger.anchor``, exactly as
``sov-ledger serve`` would. The coordinator's own entries (``relay``) are signed with its
did:key (``ledger.authority.sign_entry``) and appended under the same rules as anyone's: the
coordinator is a registered author of kind ``relay`` like any other party.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import grpc
import orjson

from consent.identity import Identity
from ledger.anchor import AnchorScheduler, anchorer_for_home
from ledger.authority import authorize, sign_entry
from ledger.errors import LedgerError
from ledger.events import utc_now
from ledger.home import init_home, load_config, open_authors, open_log
from ledger.service import SERVICE_NAME, LedgerServicer
from protos.sovereign.v1 import ledger_pb2_grpc

log = logging.getLogger("coordinator.ledger")
LEDGER_FOLDER = "ledger"


def create(home: Path, name: str, identity: Identity, passphrase: str) -> Path:
    """A ledger home inside the coordinator home, with the coordinator as its author."""
    folder = Path(home) / LEDGER_FOLDER
    init_home(folder, origin=f"sovereign-fabric/{name}/ledger", passphrase=passphrase)
    with open_authors(folder) as authors:
        authors.add(identity.did, name, "coordinator")
    return folder


class HostedLedger:
    """The ledger service, its anchor schedule and the coordinator's signed entries."""

    service_name = SERVICE_NAME

    def __init__(self, folder: Path, passphrase: str, identity: Identity) -> None:
        self.identity = identity
        self.log = open_log(folder, passphrase)
        self.authors = open_authors(folder)
        anchorer, self.embedded_chain = anchorer_for_home(folder, None, self.log.origin,
                                                          passphrase)
        self.scheduler = AnchorScheduler(anchorer, self.log.latest_note,
                                         load_config(folder).anchor_interval_seconds)
        self.servicer = LedgerServicer(self.log, self.authors, anchorer.store)

    def add_to(self, server: grpc.Server) -> None:
        ledger_pb2_grpc.add_LedgerServiceServicer_to_server(self.servicer, server)

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        self.log.close()

    def record_relay(self, relay_id: str, envelopes: list[bytes],
                     states: dict[str, str]) -> Any:
        """Append the signed ``relay`` entry; its receipt, or None if the ledger refused
        (logged: a relay is delivered whether or not its record could be written)."""
        event = {"type": "relay", "schema_version": 1, "time": utc_now(), "relay_id": relay_id,
                 "envelope_digests": [hashlib.sha256(e).hexdigest() for e in envelopes],
                 "delivered": sorted(d for d, s in states.items() if s == "delivered"),
                 "pending": sorted(d for d, s in states.items() if s == "pending")}
        refused = sorted(d for d, s in states.items() if s == "refused")
        if refused:
            event["refused"] = refused
        try:
            entries = authorize([sign_entry(event, self.identity)], self.authors.current())
            return self.log.append_new(entries)[0]
        except LedgerError as exc:
            log.error(orjson.dumps({"event": "relay-record-failed", "error": str(exc)[:200]}
                                   ).decode())
            return None
