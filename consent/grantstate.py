"""One vocabulary for the state of a consent grant, spoken by the node (``sov-node grants
list``, ``agent_node.grantstore``), the wallet (``consent-wallet grants``) and the dashboard.

At a node a grant is ``active``, ``not-yet-valid`` (signed to start later), ``expired`` or
``revoked``. The wallet adds where delivery stands: ``pending-delivery`` (signed, not yet at
the node: ``consent-wallet sync`` delivers it), ``revocation-pending`` (revoked here, not yet
at the node, where it still works) and ``refused`` (the node said no).
"""

from __future__ import annotations

ACTIVE = "active"
NOT_YET_VALID = "not-yet-valid"
EXPIRED = "expired"
REVOKED = "revoked"
PENDING_DELIVERY = "pending-delivery"
REVOCATION_PENDING = "revocation-pending"
REFUSED = "refused"

AT_NODE = (ACTIVE, NOT_YET_VALID, EXPIRED, REVOKED)
IN_WALLET = (*AT_NODE, PENDING_DELIVERY, REVOCATION_PENDING, REFUSED)
#: States in which revoking still changes something.
REVOCABLE = (ACTIVE, NOT_YET_VALID, PENDING_DELIVERY)

MEANING = {
    ACTIVE: "in force: the requester may ask under it",
    NOT_YET_VALID: "signed to start later",
    EXPIRED: "past its end",
    REVOKED: "revoked by the customer",
    PENDING_DELIVERY: "signed, not yet delivered to the node",
    REVOCATION_PENDING: "revoked in the wallet, not yet at the node (still in force there)",
    REFUSED: "refused by the node",
}

__all__ = ["ACTIVE", "AT_NODE", "EXPIRED", "IN_WALLET", "MEANING", "NOT_YET_VALID",
           "PENDING_DELIVERY", "REFUSED", "REVOCABLE", "REVOCATION_PENDING", "REVOKED"]
