"""One grant-state vocabulary (consent.grantstate) for the node, the wallet and the dashboard:
a grant signed to start later was 'pending' at the node and 'not-yet-valid' in the wallet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent_node.grantstore import _status
from consent import grantstate
from wallet import service
from wallet.store import GrantRecord


def _row(**over: object) -> dict[str, object]:
    now = datetime.now(UTC).timestamp()
    row = {"grant_id": "urn:uuid:x", "requester": "did:key:z", "purpose": "p", "scopes": "t",
           "max_queries": None, "dp_epsilon": None, "expires": now + 3600,
           "not_before": now - 60, "revoked_at": None}
    row.update(over)
    return row


def test_the_node_speaks_the_shared_words() -> None:
    now = datetime.now(UTC)
    later = now.timestamp() + 600
    seen = {_status(_row(**over), (0, 0), now)["status"] for over in (
        {}, {"not_before": later}, {"expires": now.timestamp() - 1},
        {"revoked_at": "2026-01-01T00:00:00Z"})}
    assert seen == set(grantstate.AT_NODE)


def _record(delivery: str = "delivered", **over: object) -> GrantRecord:
    now = datetime.now(UTC)
    fields = {"id": "urn:uuid:x", "digest": "d", "credential": {}, "node_address": "n:1",
              "node_did": "did:key:n", "requester": "did:key:r", "purpose": "p",
              "scopes": ("t",), "issued": now, "expires": now + timedelta(hours=1),
              "max_queries": None, "dp_epsilon": None, "delivery": delivery,
              "delivery_error": None, "delivered_at": None, "last_status": None,
              "status_at": None, "revoked_at": None, "ledger_receipt": None}
    fields.update(over)
    return GrantRecord(**fields)  # type: ignore[arg-type]


def test_the_wallet_speaks_the_shared_words() -> None:
    now = datetime.now(UTC)
    later = (now + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    states = {
        service._status_of(_record(), now),
        service._status_of(_record(credential={"validFrom": later}), now),
        service._status_of(_record(expires=now - timedelta(seconds=1)), now),
        service._status_of(_record(revoked_at=now), now),
        service._status_of(_record(delivery=service.PENDING), now),
        service._status_of(_record(delivery=service.REFUSED), now),
        service._status_of(_record(), now, revocation_pending=True),
    }
    assert states == set(grantstate.IN_WALLET)
