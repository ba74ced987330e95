"""The consent wallet: the customer's keys, grants, revocations, access history and export.

``service`` is the Python API that mirrors the ``consent-wallet`` CLI (``cli``, thin);
``store`` the local SQLite store; ``parsing`` human inputs; ``anchoring`` the ledger checks;
``dashboard`` the read-only page on 127.0.0.1 with one-click revoke.
"""

# The Python API other code may import (tests/test_public_names.py): the rest is the wallet's.
__all__ = ["errors", "service"]
