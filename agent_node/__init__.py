"""The agent node: runs on the enterprise's premises next to its own data sources.

Read in this order:

- ``home``        the node home: keys, TLS, ``node.toml``, encrypted master key (``sov-node init``)
- ``datamap``     the declarative TOML data map: sources, datasets, column types and scope tiers
- ``sources``     SQLite, CSV, PostgreSQL and MariaDB connectors (streaming rows)
- ``vaultcrypto`` master key, per-subject SM4 data keys, keyed opaque references
- ``vault``       the SQLite vault, incremental ``sync``, subject bindings, group commit
- ``activity``    ``activity.sqlite`` beside the vault: the tables every query writes
- ``grantstore``  wallet-signed grants and revocations, budgets
- ``spend`` / ``releases`` / ``nonces``  the debit journal, released sets, spent nonces
- ``query``       the structured aggregate query and its validation
- ``engine``      consent-scoped SQL, k-suppression, overlap control, OpenDP noise, access events
- ``accesslog``   the hash-chained access log, signed heads, the ledger queue
- ``service``     the ``sovereign.v1.AgentNode`` gRPC service (sealed envelopes, replay guard)
- ``server``      assembles and runs a node, pushes heads to the ledger
- ``client``      the Python client wallets and requesters use; ``requester`` the CRM side
- ``cli`` / ``requester_cli``  ``sov-node`` and ``sov-query`` (thin; nothing imports them)
"""

# The modules other packages may import (tests/test_public_names.py): the client side a wallet
# or a requester uses, and the node's Python API. Storage, engine and service are the node's own.
__all__ = ["client", "errors", "network", "node", "requester"]
