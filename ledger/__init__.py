"""The hash ledger: an RFC 9162 Merkle log of grants, revocations, access heads, models and
erasure proofs, with C2SP signed tree heads, receipts and chain anchoring.

- ``merkle``   RFC 9162 §2.1 hashing, inclusion and consistency proofs (SHA-256 or SM3)
- ``events``   the event types the log accepts (digests and salted commitments only)
- ``models``   data model: log public key, receipts, consistency proofs, anchors
- ``note``     signed tree heads as C2SP checkpoints in signed notes
- ``log``      the durable SQLite log; ``leafindex`` finds entries by leaf hash
- ``authority`` who may write what: entry signatures, node endorsements, the append rules;
  ``authors`` the registry of parties (nodes, the coordinator); ``customer`` a customer's
  own entries (per-grant keys, what the node endorses)
- ``verify``   offline verification used by clients and ``sov-audit``
- ``anchor``   anchoring roots on an EVM chain through web3, with a durable retry queue
- ``home``     a ledger's home folder; ``service`` / ``wire`` / ``client`` the gRPC service
- ``audit`` / ``report``  the logic behind ``sov-audit``; ``cli`` / ``audit_cli`` the commands
"""

# The modules other packages may import (tests/test_public_names.py); the rest (the log,
# notes, the leaf index, the audit and report logic, the commands) is the ledger's own.
__all__ = ["anchor", "authority", "authors", "client", "customer", "erasure", "errors", "events",
           "home", "merkle", "migration", "models", "service", "verify"]
