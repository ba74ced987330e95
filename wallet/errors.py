"""Explicit error classes of the consent wallet.

Every error's ``str()`` is one sentence a customer can act on: what was wrong and how to fix
it. Messages never contain a passphrase, a key, or customer data.
"""

from __future__ import annotations


class WalletError(Exception):
    """Base class of every error raised by ``wallet``."""


class WalletExists(WalletError):
    """``init`` was asked to create a wallet where one already exists."""


class WalletNotFound(WalletError):
    """No wallet has been created in the chosen home folder."""


class InvalidDuration(WalletError):
    """A duration such as ``--ttl`` or ``--since`` could not be parsed."""


class TTLTooLong(WalletError):
    """A grant would last longer than policy allows (72 hours, or less at some nodes)."""


class InvalidPurpose(WalletError):
    """The purpose is not in the controlled vocabulary (the message suggests close ones)."""


class InvalidScope(WalletError):
    """A scope tier is not one of identity, transaction, sentiment."""


class InvalidRequester(WalletError):
    """The requester is not a valid did:key."""


class InvalidInput(WalletError):
    """Some other option has a value the wallet cannot use."""


class UnknownNode(WalletError):
    """No CA certificate is known for a node address."""


class NodeIdentityChanged(WalletError):
    """A node presents another DID than the one pinned for its address, with no key rotation
    signed by the pinned key: an impostor unless its owner says otherwise (`nodes trust`)."""


class UnknownGrant(WalletError):
    """No grant with that id is held by this wallet."""


class GrantAlreadyRevoked(WalletError):
    """The grant was revoked before."""


class GrantAlreadyExpired(WalletError):
    """The grant expired, so there is nothing left to revoke."""


class DeliveryPending(WalletError):
    """A signed statement was saved locally but the node could not be reached; retry later."""


class LedgerNotConfigured(WalletError):
    """A ledger operation was asked for but no ledger address is configured."""


class StoreDamaged(WalletError):
    """The local database (wallet.db) is not readable as a wallet database."""


class LedgerUnavailable(WalletError):
    """The ledger could not be reached, or not verified with the CA given."""


class MigrationPending(WalletError):
    """A migration stopped at a step a node must finish (unreachable): its durable record
    is kept, and ``consent-wallet migrate --resume`` carries on from there."""


class MigrationRefused(WalletError):
    """The destination node refused the import: the migration was rolled back, nothing moved."""
