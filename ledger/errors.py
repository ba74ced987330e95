"""Error classes of the hash ledger (RFC 9162 log, C2SP checkpoints, chain anchors).

Every error's ``str()`` is one user-facing sentence that says what failed and, where it
helps, how to fix it. Errors never carry event contents, keys or passphrases.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every ledger error."""


class ProofError(LedgerError):
    """A Merkle proof (RFC 9162 §2.1.3 / §2.1.4) did not verify or could not be built."""


class InclusionProofError(ProofError):
    """An inclusion proof does not lead from the leaf to the claimed root."""


class ConsistencyProofError(ProofError):
    """A consistency proof does not show the old tree is a prefix of the new one."""


class CheckpointError(LedgerError):
    """A signed tree head (C2SP checkpoint / signed note) is malformed or badly signed."""


class EventError(LedgerError):
    """An event is not a valid ledger event (wrong type, schema or personal data)."""


class StorageError(LedgerError):
    """The ledger database is missing, corrupt or inconsistent."""


class ReceiptError(LedgerError):
    """A receipt is malformed or one of its checks failed."""


class AnchorError(LedgerError):
    """A chain anchor could not be written, found or matched to a tree head."""


class LogKeyError(LedgerError):
    """The log's key or its public-key file is missing, wrong or malformed."""


class AuthorityError(LedgerError):
    """An entry lacks the authority to be appended (``ledger.authority``)."""


class Unauthenticated(AuthorityError):
    """An entry carries no author signature, or a signature that does not verify."""


class PermissionDenied(AuthorityError):
    """A verified author may not write this entry (unregistered, kind not allowed, wrong node)."""


class DuplicateEntry(LedgerError):
    """An entry is already in the log (a replayed append); nothing was appended."""


class AuthorsError(LedgerError):
    """The authors registry refused a change or could not be read (``ledger.authors``)."""
