"""The consent wallet's Python API: everything the ``consent-wallet`` CLI and the dashboard do.

A ``Wallet`` holds the customer's identity (a did:key in a ``consent.keystore`` file) and a
``WalletStore``. It signs W3C Verifiable Credential consent grants and revocations with the
consent kernel, delivers them to agent nodes over TLS gRPC (``agent_node.client.NodeClient``),
keeps every signed statement locally before delivery (so an unreachable node loses nothing and
delivery can be retried), reads grant status and access events back, and anchors grant and
revocation digests in the ledger when one is configured. The ledger's log key is pinned at
``set_ledger`` and every receipt (the wallet's own and those a node hands over for its
access-log heads) is verified with it (``wallet.anchoring``).
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from consent import grantstate
from consent.grants import issue_grant, issue_revocation, verify_grant
from consent.identity import PROFILES, Identity
from consent.keystore import load_identity, save_identity, write_private_file
from consent.passphrase import MIN_LENGTH as MIN_PASSPHRASE
from consent.sm import SM4GCM, hmac_sm3
from consent.utctime import utc_text
from ledger.customer import grant_key
from protos.transport import canonical_address, node_address
from wallet.errors import (
    DeliveryPending,
    GrantAlreadyExpired,
    GrantAlreadyRevoked,
    InvalidInput,
    LedgerUnavailable,
    MigrationPending,
    MigrationRefused,
    NodeIdentityChanged,
    UnknownGrant,
    UnknownNode,
    WalletExists,
    WalletNotFound,
)

__all__ = [
    "AuditKey", "CoordinatorInfo", "GrantOutcome", "GrantView", "MigrationOutcome",
    "MigrationRefused", "ReceiptFiles", "RelayPending", "RelayView", "RevokeOutcome",
    "SyncReport", "Wallet", "WalletExists", "WalletNotFound",
    "check_purpose", "check_ttl", "grant_views",
    "open_store", "read_ca", "wallet_exists", "whoami", "write_credential", "write_receipts",
]
from wallet.parsing import (
    MAX_TTL,
    check_purpose,
    check_purpose_text,
    check_requester,
    check_scopes,
    check_ttl,
)
from wallet.store import (
    DELIVERED,
    PENDING,
    AccessRecord,
    GrantRecord,
    NodeRecord,
    WalletStore,
    from_iso,
    iso,
    utcnow,
)

KEYSTORE_FILE = "keystore.json"
REFUSED = grantstate.REFUSED  # also the delivery state of a grant the node refused
CANCELLED = "cancelled"
REVOCATION_PENDING = grantstate.REVOCATION_PENDING

# (address, ca_pem, caller) -> a node client; the real one is agent_node.client.NodeClient.
ClientFactory = Callable[[str, bytes, Identity], Any]
# A migration's export while it is in flight: sealed under a key derived from the wallet key.
EXPORT_KEY_LABEL = b"sovereign-fabric/wallet/migration-export"
EXPORT_NONCE_BYTES = 12


ERASE_ROUTED_TIMEOUT = 30.0  # seconds; a coordinator's default max_deadline_ms
NOT_ENDORSED = "its node never endorsed its ledger entry, so it is not anchored"


def _node_client_factory(address: str, ca_pem: bytes, caller: Identity) -> Any:
    from agent_node.client import NodeClient

    return NodeClient(address, ca_pem, caller)


def _node_errors() -> tuple[type[Exception], type[Exception]]:
    """(NodeError, NodeUnreachable) from the agent node's client."""
    from agent_node.client import NodeError, NodeUnreachable

    return NodeError, NodeUnreachable


def grpc_error() -> type[Exception]:
    import grpc

    return grpc.RpcError  # type: ignore[no-any-return]


def expected_errors() -> tuple[type[Exception], ...]:
    """Every error a command may end with that is the user's to fix (one sentence each)."""
    from consent.errors import ConsentError
    from wallet.errors import WalletError

    errors: list[type[Exception]] = [ConsentError, WalletError]
    try:
        from agent_node.client import NodeError

        errors.append(NodeError)
    except ImportError:  # purely local commands still work without the node client
        pass
    try:
        from ledger.errors import LedgerError

        errors.append(LedgerError)
    except ImportError:  # the ledger is optional
        pass
    return tuple(errors)


def default_home() -> Path:
    return Path.home() / ".consent-wallet"


def read_ca(path: Path) -> bytes:
    """Read a PEM CA certificate, refusing anything that is not one."""
    try:
        pem = Path(path).read_bytes()
    except OSError:
        raise InvalidInput(f"cannot read the CA certificate file {path}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise InvalidInput(f"{path} is not a PEM certificate (-----BEGIN CERTIFICATE-----)")
    return pem


@dataclass(frozen=True)
class Whoami:
    did: str
    profile: str
    home: str


@dataclass(frozen=True)
class GrantOutcome:
    """What ``grant`` did: the grant is always saved; ``delivered`` says if the node has it."""

    grant: GrantRecord
    delivered: bool
    message: str | None = None


@dataclass(frozen=True)
class GrantView:
    """One grant as the customer sees it (``grants`` command and dashboard)."""

    id: str
    status: str  # active | expired | revoked | revocation-pending | not-yet-valid |
    #              pending-delivery | refused
    requester: str
    purpose: str
    scopes: tuple[str, ...]
    node_address: str
    node_name: str | None
    node_region: str | None
    node_residency: str | None
    issued: datetime
    expires: datetime
    delivery: str
    queries_used: int | None
    max_queries: int | None
    epsilon_spent: float | None
    dp_epsilon: float | None
    status_at: datetime | None
    status_fresh: bool  # True when read from the node just now, False when last known
    ledger_anchored: bool
    #: the privacy budget the node applies: the wallet's dp_epsilon, else the node's default
    #: per grant (dp mode); None when the node reported none
    epsilon_budget: float | None = None

    @property
    def queries_left(self) -> int | None:
        if self.max_queries is None:
            return None
        return max(self.max_queries - (self.queries_used or 0), 0)

    @property
    def budget(self) -> float | None:
        return self.dp_epsilon if self.dp_epsilon is not None else self.epsilon_budget

    @property
    def epsilon_left(self) -> float | None:
        if self.budget is None:
            return None
        # Both are whole micro-epsilon at the node: round away float noise in the difference.
        return max(round(self.budget - (self.epsilon_spent or 0.0), 6), 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "status": self.status, "requester": self.requester,
            "purpose": self.purpose, "scopes": list(self.scopes),
            "node": {"address": self.node_address, "name": self.node_name,
                     "region": self.node_region, "residency": self.node_residency},
            "issued": iso(self.issued), "expires": iso(self.expires),
            "delivery": self.delivery, "queries_used": self.queries_used,
            "max_queries": self.max_queries, "queries_left": self.queries_left,
            "epsilon_spent": self.epsilon_spent, "dp_epsilon": self.dp_epsilon,
            "epsilon_budget": self.budget, "epsilon_left": self.epsilon_left,
            "status_at": iso(self.status_at) if self.status_at else None,
            "status_fresh": self.status_fresh, "ledger_anchored": self.ledger_anchored,
        }


@dataclass(frozen=True)
class RevokeOutcome:
    grant_id: str
    confirmed: bool
    revoked_at: datetime
    message: str
    relay: RelayView | None = None  # when the coordinator carried it


@dataclass(frozen=True)
class RelayView:
    """A revocation handed to the coordinator: which nodes have it and which not yet (the
    coordinator keeps delivering those, also across its restarts)."""

    coordinator: str
    relay_id: str
    delivered: list[str]  # node DIDs whose signed receipt the wallet verified
    pending: list[str]  # node DIDs not reached yet
    refused: dict[str, str]  # node DID -> the node's reason

    def to_json(self) -> dict[str, Any]:
        return {"coordinator": self.coordinator, "relay_id": self.relay_id,
                "delivered": self.delivered, "pending": self.pending, "refused": self.refused}


@dataclass(frozen=True)
class CoordinatorInfo:
    """The coordinator the wallet falls back on, and the nodes of this wallet it lists."""

    address: str
    nodes: int  # registered nodes whose signed registrations verified
    known: list[str]  # of those, the node addresses this wallet holds (by pinned DID)

    def to_json(self) -> dict[str, Any]:
        return {"coordinator": self.address, "nodes": self.nodes, "known_nodes": self.known}


class RelayPending(DeliveryPending):
    """The node could not be reached directly; the coordinator holds the revocation and keeps
    delivering it (``relay`` says to which nodes it has not got yet)."""

    def __init__(self, message: str, outcome: RevokeOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass
class SyncReport:
    delivered_grants: list[str] = field(default_factory=list)
    delivered_revocations: list[str] = field(default_factory=list)
    anchored_grants: list[str] = field(default_factory=list)
    anchored_revocations: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LedgerInfo:
    """The configured ledger and the log key pinned for it."""

    address: str
    origin: str
    hash_algorithm: str
    fingerprint: str


@dataclass(frozen=True)
class AccessView:
    """Access events (cached ones included) and the nodes that could not be reached."""

    events: list[AccessRecord]
    unreachable: dict[str, str]
    #: per node address, its listing checked against the heads the ledger holds for us
    #: (``wallet.anchoring.ListingCheck``); absent when no ledger is set or none was reachable
    integrity: dict[str, Any] = field(default_factory=dict)
    ledger_problem: str | None = None  # why the heads could not be read from the ledger


def _keystore_path(home: Path) -> Path:
    return Path(home) / KEYSTORE_FILE


def wallet_exists(home: Path) -> bool:
    return _keystore_path(home).exists()


def open_store(home: Path) -> WalletStore:
    """The local store alone (no passphrase): enough for read-only views."""
    if not wallet_exists(home):
        raise WalletNotFound(
            f"no wallet in {home}: run `consent-wallet init` first (or pass --home)"
        )
    return WalletStore(Path(home))


def whoami(home: Path) -> Whoami:
    """The wallet's DID and profile; public values, so no passphrase is needed."""
    store = open_store(home)
    try:
        did, profile = store.get_setting("did"), store.get_setting("profile")
    finally:
        store.close()
    if did is None or profile is None:
        raise WalletNotFound(f"the wallet in {home} is incomplete: run `consent-wallet init` again")
    return Whoami(did=did, profile=profile, home=str(home))


class Wallet:
    """An unlocked wallet: identity + store + a way to reach nodes."""

    def __init__(
        self, home: Path, identity: Identity, store: WalletStore,
        client_factory: ClientFactory | None = None,
    ) -> None:
        self.home = Path(home)
        self.identity = identity
        self.store = store
        self._client_factory = client_factory or _node_client_factory
        self._clients: dict[str, Any] = {}

    # lifecycle ------------------------------------------------------------------------------

    @classmethod
    def create(cls, home: Path, passphrase: str, profile: str = "intl") -> Wallet:
        """Create keys and an encrypted keystore; refuses to overwrite an existing wallet."""
        home = Path(home)
        if wallet_exists(home) or (home / WalletStore.FILENAME).exists():
            raise WalletExists(
                f"a wallet already exists in {home}; choose another --home to create a new one"
            )
        if profile not in PROFILES:
            raise InvalidInput(f"unknown profile {profile!r}: use intl or gm")
        if len(passphrase) < MIN_PASSPHRASE:
            # The same rule as every tool's new keys (consent.passphrase).
            raise InvalidInput(f"the passphrase must be at least {MIN_PASSPHRASE} characters "
                               "(it alone protects your keys at rest)")
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = Identity.generate(profile)  # type: ignore[arg-type]
        save_identity(_keystore_path(home), identity, passphrase)
        store = WalletStore(home)
        store.set_setting("did", identity.did)
        store.set_setting("profile", identity.profile)
        store.set_setting("created", iso(utcnow()))
        return cls(home, identity, store)

    @classmethod
    def open(
        cls, home: Path, passphrase: str, client_factory: ClientFactory | None = None
    ) -> Wallet:
        """Unlock the keystore (``KeystoreError`` on a wrong passphrase or a tampered file)."""
        store = open_store(home)
        try:
            identity = load_identity(_keystore_path(home), passphrase)
        except BaseException:
            store.close()
            raise
        return cls(Path(home), identity, store, client_factory)

    def close(self) -> None:
        for client in self._clients.values():
            _close(client)
        self._clients.clear()
        self.store.close()

    def __enter__(self) -> Wallet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def whoami(self) -> Whoami:
        return Whoami(did=self.identity.did, profile=self.identity.profile, home=str(self.home))

    # nodes ----------------------------------------------------------------------------------

    def add_node(self, address: str, ca_pem: bytes, *, expected_did: str | None = None
                 ) -> NodeRecord:
        """Fetch the node's verified NodeInfo with ``ca_pem``, then remember both.

        Nothing is saved unless the node answered over TLS with that CA: a wrong CA file or an
        unreachable address must not replace the CA of a node the wallet already talks to.
        The first contact pins the node's DID (trust on first use), or ``expected_did`` pins
        it ahead (the DID its operator published): a node presenting another is refused.
        ``address`` is read as every client reads a node's (protos.transport.node_address:
        ``localhost`` is 127.0.0.1, the host's case is not kept, the port defaults to 7443),
        so one node is one entry however it is written.
        """
        address = node_address(address)
        if expected_did is not None:
            check_node_did(expected_did)
            known = self.store.node(address)
            if known is not None and known.did not in (None, expected_did):
                raise NodeIdentityChanged(
                    f"the node at {address} is pinned to {known.did}, not {expected_did}; "
                    f"nothing was saved: use `consent-wallet nodes trust {address} --new-did "
                    f"{expected_did}` to change it")
        self._remember_node(address, ca_pem, accept_did=expected_did, exact=True)
        record = self.store.node(address)
        assert record is not None  # written by _remember_node
        return record

    def trust_node(self, address: str, new_did: str, ca_pem: bytes | None = None) -> NodeRecord:
        """The customer's explicit word that the node at ``address`` is now ``new_did``
        (``nodes trust --new-did``): pinned only if the node presents exactly that DID."""
        address = node_address(address)
        check_node_did(new_did)
        known = self._node(address)
        self._remember_node(address, ca_pem or known.ca_pem, accept_did=new_did, exact=True)
        record = self.store.node(address)
        assert record is not None
        return record

    def _remember_node(self, address: str, ca_pem: bytes, *, accept_did: str | None = None,
                       exact: bool = False) -> None:
        """Save ``ca_pem`` for ``address`` only after the node was reached and verified with it
        (and presented the pinned DID, a DID a signed rotation leads to, or ``accept_did``)."""
        NodeError, _ = _node_errors()
        client = self._client_factory(address, ca_pem, self.identity)
        try:
            info = client.node_info()
        except NodeError as exc:
            _close(client)
            raise type(exc)(
                f"{_node_problem(address, exc)}; nothing was saved: check the address, that "
                "the node is running, and that the CA file is the node's own",
                exc.code,  # type: ignore[attr-defined]
            ) from None
        try:
            if exact and accept_did is not None and info.did != accept_did:
                raise NodeIdentityChanged(
                    f"the node at {address} presents {info.did}, not the DID you gave "
                    f"({accept_did}); nothing was saved: check the DID with its operator")
            retired = self._checked_identity(address, info, accept_did)
        except BaseException:
            _close(client)
            raise
        self.store.put_node(address, ca_pem)
        self.store.put_node_info(address, info, retired)
        old = self._clients.pop(address, None)
        if old is not None:
            _close(old)
        self._clients[address] = client

    def _checked_identity(self, address: str, info: Any, accept_did: str | None = None
                          ) -> list[str] | None:
        """Hold the node to its pinned DID: the same DID, one a chain of rotations signed by
        the pinned key leads to (``consent.rotation``), or ``accept_did`` (the customer's
        explicit word). Returns the retired DIDs to record when the DID changes, else None;
        ``NodeIdentityChanged`` for anything else, before anything is sent to the node."""
        from consent.errors import RotationError
        from consent.rotation import follow

        known = self.store.node(address)
        pinned = known.did if known else None
        if pinned is None or info.did == pinned:
            return None
        retired = [d for d in (known.retired_dids if known else ()) if d != info.did]
        if info.did == accept_did:
            return [*retired, pinned]
        document = getattr(info, "document", {}) or {}
        try:
            chain = follow(pinned, info.did, document.get("rotations") or [])
        except RotationError:
            raise NodeIdentityChanged(
                f"the node at {address} presents the DID {info.did}, not the one you pinned "
                f"({pinned}), and no key rotation signed by the pinned key leads to it; nothing "
                f"was sent to it: if its operator confirms the new key, run `consent-wallet "
                f"nodes trust {address} --new-did {info.did}`") from None
        return [*retired, *(step.previous for step in chain)]

    def _use_node_ca(self, address: str, ca_pem: bytes | None) -> None:
        """``--node-ca``: a CA equal to the remembered one needs no check; a new one does."""
        if ca_pem is None:
            return
        known = self.store.node(address)
        if known is not None and known.ca_pem == ca_pem and known.did is not None:
            return
        self._remember_node(address, ca_pem)

    def refresh_node(self, address: str) -> None:
        address = node_address(address)
        info = self._client(address).node_info()
        self.store.put_node_info(address, info, self._checked_identity(address, info))

    def _node(self, address: str) -> NodeRecord:
        record = self.store.node(address)
        if record is None:
            raise UnknownNode(
                f"no CA certificate is known for node {address}: pass --node-ca FILE once, "
                f"or run `consent-wallet nodes add {address} --ca FILE`"
            )
        return record

    def _client(self, address: str) -> Any:
        """A client of the node at ``address``, whose identity was checked against the pinned
        DID before any request is sealed to it (``NodeIdentityChanged`` otherwise)."""
        if address not in self._clients:
            record = self._node(address)
            client = self._client_factory(address, record.ca_pem, self.identity)
            try:
                info = client.node_info()
                retired = self._checked_identity(address, info)
            except BaseException:
                _close(client)
                raise
            if retired is not None:  # a signed rotation: follow it, and remember the old DIDs
                self.store.put_node_info(address, info, retired)
            self._clients[address] = client
        return self._clients[address]

    # grants ---------------------------------------------------------------------------------

    def grant(
        self, *, node: str, requester: str, purpose: str, scopes: list[str], ttl: timedelta,
        purpose_text: str = "", max_queries: int | None = None,
        dp_epsilon: float | None = None, node_ca: bytes | None = None,
        now: datetime | None = None,
    ) -> GrantOutcome:
        """Check every input, sign the grant, save it, then deliver it (and anchor its hash)."""
        node = node_address(node)
        check_ttl(ttl, MAX_TTL)
        check_purpose(purpose)
        scope_list = check_scopes(scopes)
        check_requester(requester)
        if max_queries is not None and max_queries < 1:
            raise InvalidInput("--max-queries must be a whole number of at least 1")
        if dp_epsilon is not None and not 0 < dp_epsilon <= 10:
            raise InvalidInput("--dp-epsilon must be a number above 0 and at most 10, like 1.0")
        check_purpose_text(purpose_text)
        self._use_node_ca(node, node_ca)
        record = self._node(node)
        _, NodeUnreachable = _node_errors()
        try:
            self.refresh_node(node)
        except NodeUnreachable:
            # A node reached before is still known by its DID: sign now, deliver later.
            if record.did is None:
                raise
        record = self._node(node)
        if record.max_ttl_hours:
            check_ttl(ttl, timedelta(hours=record.max_ttl_hours))
        assert record.did is not None  # set by refresh_node or a previous contact
        # The grant binds a key of its own for its ledger entries (ledger.customer), so the
        # ledger never sees our DID and our grants' entries cannot be linked.
        grant_id = f"urn:uuid:{uuid.uuid4()}"
        credential = issue_grant(
            self.identity, requester=requester, nodes=[record.did], purpose=purpose,
            scopes=scope_list, ttl=ttl, purpose_text=purpose_text, max_queries=max_queries,
            dp_epsilon=dp_epsilon, now=now, grant_id=grant_id,
            ledger_key=grant_key(self.identity, grant_id).did,
        )
        signed = verify_grant(credential, now=now)
        self.store.add_grant(signed, node)
        return self._deliver_grant(signed.id)

    def _deliver_grant(self, grant_id: str) -> GrantOutcome:
        NodeError, NodeUnreachable = _node_errors()
        record = self._grant(grant_id)
        entry = self._grant_entry(record)
        try:
            # The salt lets the node name us in its ledger heads by commitment only.
            ack = self._client(record.node_address).submit_grant(
                record.credential, subject_salt=self._subject_salt().hex(), ledger_entry=entry)
        except NodeUnreachable as exc:
            self.store.mark_grant_failed(grant_id, str(exc))
            return GrantOutcome(
                self._grant(grant_id), False,
                f"{_node_problem(record.node_address, exc)}; the signed grant is saved as "
                "pending delivery: run "
                f"`consent-wallet sync` (or `grant --retry {grant_id}`) when the node is back",
            )
        except NodeError as exc:
            self.store.mark_grant_failed(grant_id, str(exc))
            self._set_delivery(grant_id, REFUSED)
            return GrantOutcome(self._grant(grant_id), False, f"the node refused the grant: {exc}")
        self.store.mark_grant_delivered(grant_id, _as_time(getattr(ack, "accepted_at", None)))
        problem = self._keep_endorsed("grants", grant_id, entry, ack)
        warning = self._anchor_grant(grant_id, problem)
        return GrantOutcome(self._grant(grant_id), True, warning)

    def _grant_key(self, record: GrantRecord) -> Identity | None:
        """The grant's own ledger key, when the grant binds it (grants signed before it did
        cannot have their entries shown to be ours, so they are not anchored)."""
        key = grant_key(self.identity, record.id)
        bound = record.credential.get("credentialSubject", {}).get("ledgerKey")
        return key if bound == key.did else None

    def _grant_entry(self, record: GrantRecord) -> dict[str, Any] | None:
        """The grant's ledger entry signed with its own key, for the node to endorse."""
        from ledger.authority import sign_entry
        from ledger.customer import grant_entry

        key = self._grant_key(record)
        if key is None:
            return None
        grant = verify_grant(record.credential, now=record.issued)
        return sign_entry(grant_entry(grant, self._commitment(), record.node_did), key)

    def _revocation_entry(self, record: GrantRecord, document: dict[str, Any]
                          ) -> dict[str, Any] | None:
        """The revocation's ledger entry, signed with the grant's own key."""
        from consent.grants import verify_revocation
        from ledger.authority import sign_entry
        from ledger.customer import revocation_entry

        key = self._grant_key(record)
        if key is None:
            return None
        event = revocation_entry(verify_revocation(document).digest, record.digest,
                                 self._commitment(), record.node_did)
        return sign_entry(event, key)

    def _commitment(self) -> str:
        from ledger.events import subject_commitment

        return subject_commitment(self.identity.did, self._subject_salt())

    def _keep_endorsed(self, table: str, grant_id: str, entry: dict[str, Any] | None,
                       ack: Any) -> str | None:
        """Check the node's endorsement of our entry and keep the endorsed entry for the
        ledger; a sentence when there is none (the grant or revocation stands either way)."""
        from ledger.authority import check_entry
        from ledger.errors import LedgerError
        from ledger.events import encode_event

        if entry is None:
            return ("this grant binds no ledger key (it was signed before ledger entries were "
                    "authenticated), so it is not anchored in the ledger")
        body = (getattr(ack, "document", None) or {}).get("body", {})
        endorsement = body.get("ledger_endorsement")
        if not isinstance(endorsement, str):
            refusal = body.get("ledger_refusal") or "the node sent no endorsement"
            return f"the node did not endorse the ledger entry ({refusal}); it is not anchored"
        endorsed = {**entry, "endorsement": endorsement}
        try:
            check_entry(endorsed, encode_event(endorsed), None)  # both signatures, the node
        except LedgerError as exc:
            return f"the node's endorsement of the ledger entry is not valid ({exc})"
        self.store.set_ledger_entry(table, grant_id, endorsed)
        return None

    def _set_delivery(self, grant_id: str, state: str) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE grants SET delivery = ? WHERE id = ?", (state, grant_id))

    def retry(self, grant_id: str) -> GrantOutcome:
        """Re-deliver a grant saved as pending (never re-signs it)."""
        record = self._grant(grant_id)
        if record.revoked_at is not None:
            raise GrantAlreadyRevoked(f"grant {grant_id} was revoked; it will not be delivered")
        if record.delivery == DELIVERED:
            return GrantOutcome(record, True, "the node already holds this grant")
        if record.expires <= utcnow():
            raise GrantAlreadyExpired(
                f"grant {grant_id} expired at {iso(record.expires)} before it could be "
                "delivered; sign a new one"
            )
        return self._deliver_grant(grant_id)

    def _grant(self, grant_id: str) -> GrantRecord:
        record = self.store.grant(grant_id)
        if record is None:
            raise UnknownGrant(
                f"this wallet holds no grant {grant_id!r}; `consent-wallet grants` lists them"
            )
        return record

    # ledger ---------------------------------------------------------------------------------

    def set_ledger(self, address: str, ca_pem: bytes, *, expected_key: Any = None
                   ) -> LedgerInfo:
        """Fetch the log's public key from the ledger and pin it with the address and CA.

        With ``expected_key`` (a ``LogPublicKey`` got out of band) the ledger's key must be
        exactly that one. Nothing is saved when the ledger cannot be reached or disagrees.
        """
        from ledger.client import LedgerClient
        from ledger.errors import LedgerError

        address = canonical_address(address)
        try:
            with LedgerClient(address, ca_pem) as client:
                key = client.log_key
                client.latest_tree_head()  # the ledger can sign with that key, right now
        except LedgerError as exc:
            cause = exc.__cause__
            code = (cast(Any, cause).code().name if isinstance(cause, grpc_error())
                    else type(exc).__name__)
            raise LedgerUnavailable(
                f"cannot get a verified log key from the ledger at {address} ({code}); nothing "
                "was changed: check the address, that the ledger is running, and that the CA "
                "file is the ledger's own"
            ) from None
        if expected_key is not None and key != expected_key:
            raise InvalidInput(
                f"the ledger at {address} serves a different log key than the file you gave; "
                "nothing was changed: check the address and the file with the ledger operator"
            )
        with self.store.transaction() as db:
            for name, value in (("ledger_address", address),
                                ("ledger_ca_pem", ca_pem.decode("ascii")),
                                ("ledger_log_key", json.dumps(key.to_json()))):
                db.execute("INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) "
                           "DO UPDATE SET value = excluded.value", (name, value))
        info = self.ledger_info()
        assert info is not None  # written just above
        return info

    def ledger_info(self) -> LedgerInfo | None:
        key = self.ledger_key()
        address = self.store.get_setting("ledger_address")
        if key is None or address is None:
            return None
        from wallet.anchoring import fingerprint

        return LedgerInfo(address, key.origin, key.hash_algorithm, fingerprint(key))

    def ledger_key(self) -> Any | None:
        """The pinned ``LogPublicKey``, or None when no ledger is set."""
        raw = self.store.get_setting("ledger_log_key")
        if raw is None:
            return None
        from ledger.models import LogPublicKey

        return LogPublicKey.from_json(json.loads(raw))

    def _ledger_configured(self) -> bool:
        return self.store.get_setting("ledger_address") is not None

    def _ledger(self) -> Any | None:
        address = self.store.get_setting("ledger_address")
        ca_pem = self.store.get_setting("ledger_ca_pem")
        if address is None or ca_pem is None:
            return None
        from ledger.client import LedgerClient

        key = self.ledger_key()
        client = LedgerClient(address, ca_pem.encode("ascii"), log_key=key)
        if key is None:
            # A ledger set by an older wallet: pin the key on first contact (trust on first
            # use), so that every later receipt is checked against this same key.
            self.store.set_setting("ledger_log_key", json.dumps(client.log_key.to_json()))
        return client

    def _subject_salt(self) -> bytes:
        """The wallet's 32-byte salt: the ledger sees only salted commitments to our DID."""
        salt = self.store.get_setting("subject_salt")
        if salt is None:
            salt = secrets.token_hex(32)
            self.store.set_setting("subject_salt", salt)
        return bytes.fromhex(salt)

    def audit_key(self) -> AuditKey:
        """The DID, commitment salt and commitment a compliance officer needs for
        ``sov-audit report --subject-did DID --salt SALT`` (the CLI asks first)."""
        from ledger.events import subject_commitment

        raw = self.store.get_setting("subject_salt")
        if raw is None:
            raise InvalidInput("this wallet has no commitment salt yet: it is made when your "
                               "first grant is delivered, and nothing in the ledger names you")
        salt = bytes.fromhex(raw)
        return AuditKey(self.identity.did, raw, subject_commitment(self.identity.did, salt))

    def _anchor_grant(self, grant_id: str, problem: str | None = None) -> str | None:
        """Append the grant's entry, endorsed by its node, to the ledger when one is set.

        Returns a sentence when anchoring failed: the grant is delivered either way, and
        ``sync`` retries the anchoring later.
        """
        from ledger.errors import LedgerError

        try:
            ledger = self._ledger()
        except LedgerError as exc:
            return f"the grant is delivered, but the ledger could not be reached: {exc}"
        if ledger is None:
            return None
        record = self._grant(grant_id)
        if record.ledger_entry is None:
            ledger.close()
            return f"the grant is delivered, but {problem or NOT_ENDORSED}"
        try:
            with ledger:
                receipt = ledger.append(record.ledger_entry)
        except LedgerError as exc:
            return f"the grant is delivered, but anchoring it in the ledger failed: {exc}"
        self.store.set_grant_receipt(grant_id, _receipt_json(receipt))
        return None

    def _anchor_revocation(self, grant_id: str, problem: str | None = None) -> str | None:
        """Append a delivered revocation's digest to the ledger (event type ``revocation``).

        Returns a sentence when anchoring failed; the revocation is in effect at the node
        either way, and ``sync`` retries the anchoring.
        """
        from ledger.errors import LedgerError

        try:
            ledger = self._ledger()
        except LedgerError as exc:
            return f"the revocation is in effect, but the ledger could not be reached: {exc}"
        if ledger is None:
            return None
        revocation = self.store.revocation(grant_id)
        assert revocation is not None
        if revocation.ledger_entry is None:
            ledger.close()
            return f"the revocation is in effect, but {problem or NOT_ENDORSED}"
        try:
            with ledger:
                receipt = ledger.append(revocation.ledger_entry)
        except LedgerError as exc:
            return f"the revocation is in effect, but anchoring it in the ledger failed: {exc}"
        self.store.set_revocation_receipt(grant_id, _receipt_json(receipt))
        return None

    # views ----------------------------------------------------------------------------------

    def grants(self, *, refresh: bool = True, now: datetime | None = None) -> list[GrantView]:
        """Every grant with its status; fresh from the nodes when reachable, else last known."""
        now = now or utcnow()
        fresh: set[str] = set()
        if refresh:
            fresh = self._refresh_statuses()
        return grant_views(self.store, now=now, fresh=fresh)

    def _refresh_statuses(self) -> set[str]:
        NodeError, _ = _node_errors()
        by_node: dict[str, list[str]] = {}
        for record in self.store.grants():
            if record.delivery == DELIVERED:
                by_node.setdefault(record.node_address, []).append(record.id)
        fresh: set[str] = set()
        for address, ids in by_node.items():
            try:
                statuses = self._client(address).grant_status(ids)
            except NodeError:
                continue  # shown as "last known" — the node may be down
            when = utcnow()
            for status in statuses:
                self.store.set_grant_status(status.grant_id, _status_json(status), when)
                fresh.add(status.grant_id)
        return fresh

    def revoke(
        self, grant_id: str, *, reason: str = "", now: datetime | None = None,
        coordinator: str | None = None, coordinator_ca: bytes | None = None,
    ) -> RevokeOutcome:
        """Sign a revocation, save it, deliver it and wait for the node's signed confirmation.

        The node is asked directly first; when it cannot be reached and a coordinator is set
        (``set_coordinator``, or ``coordinator`` and ``coordinator_ca`` here, remembered), the
        coordinator relays it: ``RelayPending`` when the node has not got it yet (the
        coordinator keeps delivering it; ``sync`` still tries the node directly too).
        """
        if coordinator is not None:
            self._use_coordinator(coordinator, coordinator_ca)
        now = now or utcnow()
        record = self._grant(grant_id)
        pending = self.store.revocation(grant_id)
        if pending is not None and pending.delivery == PENDING:
            raise GrantAlreadyRevoked(
                f"your revocation of grant {grant_id} is saved but not yet delivered to the "
                "node: run `consent-wallet sync` to deliver it"
            )
        if record.revoked_at is not None or (record.last_status or {}).get("status") == "revoked":
            raise GrantAlreadyRevoked(f"grant {grant_id} is already revoked")
        if record.expires <= now:
            raise GrantAlreadyExpired(
                f"grant {grant_id} already expired at {iso(record.expires)}; nothing to revoke"
            )
        document = issue_revocation(self.identity, grant_id, reason=reason, now=now)
        self.store.add_revocation(grant_id, document, now)
        if record.delivery != DELIVERED:
            # The node never received this grant, so there is nothing to revoke there.
            self._set_delivery(grant_id, CANCELLED)
            self.store.mark_revocation_confirmed(grant_id, now)
            return RevokeOutcome(grant_id, True, now, "the grant was never delivered; cancelled")
        return self._deliver_revocation(grant_id)

    def _deliver_revocation(self, grant_id: str) -> RevokeOutcome:
        NodeError, NodeUnreachable = _node_errors()
        record = self._grant(grant_id)
        revocation = self.store.revocation(grant_id)
        assert revocation is not None
        entry = self._revocation_entry(record, revocation.document)
        try:
            ack = self._client(record.node_address).revoke(revocation.document,
                                                           ledger_entry=entry)
        except NodeUnreachable as exc:
            self.store.mark_revocation_failed(grant_id, str(exc))
            relayed = self.store.get_setting(f"relay:{grant_id}")
            if relayed is not None:
                # Handed over before: the coordinator keeps delivering it, no second relay;
                # ask the node through the coordinator for its signed ack in the meantime.
                ack = self._routed_revoke(grant_id, entry)
                if ack is not None:
                    return self._confirm_revocation(grant_id, entry, ack, via=True)
                raise DeliveryPending(
                    f"{_node_problem(record.node_address, exc)}; the coordinator holds your "
                    f"signed revocation since relay {relayed} and keeps delivering it, but it "
                    "is NOT yet confirmed in effect: run `consent-wallet sync` later") from None
            if self._coordinator_address() is not None:
                return self._relay_revocation(grant_id, entry, exc)
            raise DeliveryPending(
                f"{_node_problem(record.node_address, exc)}; the signed revocation is saved "
                "but NOT yet in effect: run "
                "`consent-wallet sync` when the node is back"
            ) from None
        except NodeError as exc:
            self.store.mark_revocation_failed(grant_id, str(exc))
            raise DeliveryPending(
                f"the node did not accept the revocation: {exc}; it is saved, "
                "retry with `consent-wallet sync`"
            ) from None
        return self._confirm_revocation(grant_id, entry, ack)

    def _confirm_revocation(self, grant_id: str, entry: dict[str, Any] | None, ack: Any,
                            relay: RelayView | None = None, *, via: bool = False
                            ) -> RevokeOutcome:
        """Record the node's signed receipt (direct, relayed, or routed when ``via``) and
        anchor the revocation."""
        revoked_at = _as_time(getattr(ack, "revoked_at", None))
        self.store.mark_revocation_confirmed(grant_id, revoked_at)
        message = "confirmed by the node's signed ack"
        if relay is not None:
            message += f", relayed by the coordinator at {relay.coordinator}"
        elif via:
            message += f", through the coordinator at {self._coordinator_address()}"
        problem = self._keep_endorsed("revocations", grant_id, entry, ack)
        warning = self._anchor_revocation(grant_id, problem)
        if warning:
            message += f"; {warning} (`consent-wallet sync` retries)"
        elif self._ledger_configured():
            message += "; anchored in the ledger"
        return RevokeOutcome(grant_id, True, revoked_at, message, relay)

    # coordinator ----------------------------------------------------------------------------

    def set_coordinator(self, address: str, ca_pem: bytes) -> CoordinatorInfo:
        """Remember the coordinator that relays revocations (and routes erasure requests) to
        nodes this wallet cannot reach itself. Saved only after it answered over TLS with
        ``ca_pem`` and every node registration it listed verified: it is trusted to carry
        sealed envelopes, never to say what a node said."""
        address = canonical_address(address)
        with self._coordinator_client(address, ca_pem) as coordinator:
            listed = coordinator.nodes(fresh=True)
        with self.store.transaction() as db:
            for name, value in (("coordinator_address", address),
                                ("coordinator_ca_pem", ca_pem.decode("ascii"))):
                db.execute("INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) "
                           "DO UPDATE SET value = excluded.value", (name, value))
        return self._coordinator_view(address, listed)

    def coordinator_info(self) -> CoordinatorInfo | None:
        """The coordinator set, with what it lists now (None when none is set)."""
        address = self._coordinator_address()
        if address is None:
            return None
        with self._coordinator_client(address) as coordinator:
            return self._coordinator_view(address, coordinator.nodes(fresh=True))

    def _coordinator_view(self, address: str, listed: list[Any]) -> CoordinatorInfo:
        by_did = {r.did: r.address for r in self.store.nodes() if r.did}
        return CoordinatorInfo(address, len(listed),
                               sorted(by_did[n.did] for n in listed if n.did in by_did))

    def _coordinator_address(self) -> str | None:
        return self.store.get_setting("coordinator_address")

    def _use_coordinator(self, address: str, ca_pem: bytes | None) -> None:
        """``--via-coordinator`` (with ``--coordinator-ca`` unless it is the one set)."""
        address = canonical_address(address)
        if ca_pem is None:
            if address != self._coordinator_address():
                raise InvalidInput(f"no CA certificate is known for the coordinator at "
                                   f"{address}: pass --coordinator-ca FILE once")
            return
        self.set_coordinator(address, ca_pem)

    def _coordinator_client(self, address: str, ca_pem: bytes | None = None) -> Any:
        from agent_node.network import CoordinatorClient

        if ca_pem is None:
            stored = self.store.get_setting("coordinator_ca_pem")
            if stored is None:
                raise InvalidInput("no coordinator is set: run `consent-wallet coordinator set "
                                   "ADDRESS --ca FILE`")
            ca_pem = stored.encode("ascii")
        return CoordinatorClient(address, ca_pem, timeout=30.0, listing_ttl=0)

    def _routed(self, coordinator: Any, address: str, timeout: float = 30.0) -> Any:
        """The node at ``address`` reached through ``coordinator``: found in its listing by
        the DID this wallet pinned for it (the registration is the node's own, verified), so
        the coordinator cannot put another node in its place."""
        record = self._node(address)
        if record.did is None:
            raise UnknownNode(f"this wallet never reached the node at {address}, so it has no "
                              "DID to find it by at the coordinator")
        listed = [n for n in coordinator.nodes(fresh=True) if n.did == record.did]
        if not listed:
            raise UnknownNode(f"the coordinator at {coordinator.address} lists no node "
                              f"{record.did} (the node at {address}); nothing was sent")
        return coordinator.client_for(listed[0], self.identity, timeout=timeout)

    def _routed_revoke(self, grant_id: str, entry: dict[str, Any] | None) -> Any | None:
        """The node's signed ack of our revocation, asked through the coordinator (a sealed
        Revoke it only carries); None when the node cannot be reached that way either."""
        address = self._coordinator_address()
        if address is None:
            return None
        record = self._grant(grant_id)
        revocation = self.store.revocation(grant_id)
        assert revocation is not None
        NodeError, _ = _node_errors()
        try:
            with self._coordinator_client(address) as coordinator:
                return self._routed(coordinator, record.node_address).revoke(
                    revocation.document, ledger_entry=entry)
        except (NodeError, UnknownNode):
            return None

    def _relay_revocation(self, grant_id: str, entry: dict[str, Any] | None,
                          direct: Exception) -> RevokeOutcome:
        """Hand the revocation to the coordinator when the node is out of the wallet's reach."""
        from agent_node.client import RevocationAck

        record = self._grant(grant_id)
        revocation = self.store.revocation(grant_id)
        assert revocation is not None and record.node_did is not None
        address = self._coordinator_address()
        assert address is not None  # checked by the caller
        NodeError, _ = _node_errors()
        try:
            with self._coordinator_client(address) as coordinator:
                client = self._routed(coordinator, record.node_address)
                relay_id, results = coordinator.relay_revocation(
                    [client], revocation.document,
                    ledger_entries={record.node_did: entry} if entry else None)
        except (NodeError, UnknownNode) as exc:
            raise DeliveryPending(
                f"{_node_problem(record.node_address, direct)}, and the coordinator at "
                f"{address} could not take the revocation ({exc}); it is saved but NOT yet in "
                "effect: run `consent-wallet sync` when the node is back") from None
        (result,) = results
        relay = RelayView(address, relay_id,
                          [r.node_did for r in results if r.state == "delivered"],
                          [r.node_did for r in results if r.state == "pending"],
                          {r.node_did: r.message for r in results if r.state == "refused"})
        if result.state == "delivered" and result.receipt is not None:
            body = result.receipt["body"]
            ack = RevocationAck(body["grant_id"], body["revoked_at"], record.node_did,
                                result.receipt)
            return self._confirm_revocation(grant_id, entry, ack, relay)
        if result.state == "refused":
            self.store.mark_revocation_failed(grant_id, result.message)
            raise DeliveryPending(f"the node refused the relayed revocation: {result.message}; "
                                  "it is saved, retry with `consent-wallet sync`")
        self.store.set_setting(f"relay:{grant_id}", relay_id)
        message = (f"{_node_problem(record.node_address, direct)}; the coordinator at {address} "
                   f"holds your signed revocation (relay {relay_id}) and keeps delivering it "
                   f"until the node has it, but it is NOT yet in effect at {record.node_did}")
        raise RelayPending(message, RevokeOutcome(grant_id, False, utcnow(), message, relay))

    def sync(self) -> SyncReport:
        """Deliver every pending grant and revocation; report what is still pending."""
        report = SyncReport()
        now = utcnow()
        for record in self.store.grants():
            if record.delivery != PENDING or record.revoked_at or record.expires <= now:
                continue
            outcome = self._deliver_grant(record.id)
            if outcome.delivered:
                report.delivered_grants.append(record.id)
            else:
                report.failed[record.id] = outcome.message or "not delivered"
        if self._ledger_configured():
            for record in self.store.grants():
                if record.delivery == DELIVERED and record.ledger_receipt is None:
                    warning = self._anchor_grant(record.id)
                    if warning:
                        report.failed[record.id] = warning
                    else:
                        report.anchored_grants.append(record.id)
        for revocation in self.store.revocations():
            if revocation.delivery != PENDING:
                continue
            try:
                self._deliver_revocation(revocation.grant_id)
                report.delivered_revocations.append(revocation.grant_id)
            except DeliveryPending as exc:
                report.failed[revocation.grant_id] = str(exc)
        if self._ledger_configured():
            self._sync_revocation_anchors(report)
        return report

    def _sync_revocation_anchors(self, report: SyncReport) -> None:
        delivered = {g.id for g in self.store.grants() if g.delivered_at is not None}
        for revocation in self.store.revocations():
            if (revocation.delivery != DELIVERED or revocation.ledger_receipt is not None
                    or revocation.grant_id not in delivered):
                continue
            warning = self._anchor_revocation(revocation.grant_id)
            if warning:
                report.failed[revocation.grant_id] = warning
            else:
                report.anchored_revocations.append(revocation.grant_id)

    def access_log(self, *, since: datetime | None = None) -> AccessView:
        """Access events from every node holding our grants, each verified; cached if offline."""
        NodeError, NodeUnreachable = _node_errors()
        # Only nodes that accepted one of our grants hold events about us; a node that refused
        # or never received a grant would only answer "not bound".
        addresses = sorted({g.node_address for g in self.store.grants()
                            if g.delivered_at is not None})
        unreachable: dict[str, str] = {}
        heads, problem = self._heads_naming_us()
        integrity: dict[str, Any] = {}
        for address in addresses:
            try:
                client = self._client(address)
                # The check against the ledger needs the whole listing, whatever `since` is.
                log = client.access_events(None if heads is not None else since)
                node_did = client.node_info().did
            except NodeUnreachable as exc:
                unreachable[address] = _node_problem(address, exc)
                continue
            except NodeError as exc:
                unreachable[address] = f"the node at {address} refused to list events: {exc}"
                continue
            checks = self._ledger_checks(log, node_did)
            self.store.put_access_events(address, _access_records(address, log, checks))
            if heads is not None:
                integrity[address] = self._check_listing(address, log, node_did, heads)
        return AccessView(self.store.access_events(since), unreachable, integrity, problem)

    def _heads_naming_us(self) -> tuple[list[Any] | None, str | None]:
        """The ledger's ``access_head`` entries naming our commitment, found by asking the
        ledger (never the node), receipts verified; (None, why) when they cannot be read."""
        from ledger.errors import LedgerError
        from ledger.events import subject_commitment

        salt = self.store.get_setting("subject_salt")
        if salt is None or not self._ledger_configured():
            return None, None
        try:
            ledger = self._ledger()
            assert ledger is not None  # configured, checked above
            with ledger:
                found = ledger.access_heads(
                    subject_commitment(self.identity.did, bytes.fromhex(salt)))
        except LedgerError as exc:
            return None, (f"the ledger could not be asked for the heads that name you ({exc}); "
                          "your access log is not checked against it this time")
        return found, None

    def _check_listing(self, address: str, log: Any, node_did: str, heads: list[Any]) -> Any:
        from wallet.anchoring import check_listing

        record = self.store.node(address)
        dids = [node_did, *(record.retired_dids if record else ())]
        salt = bytes.fromhex(self.store.get_setting("subject_salt") or "")
        return check_listing([_flat_event(e) for e in log.events], int(log.head["seq"]),
                             getattr(log, "chain", {}), heads, dids, self.identity.did, salt)

    def _ledger_checks(self, log: Any, node_did: str) -> dict[int, Any]:
        """Per event seq, the ledger verdict on the node's anchored heads (wallet.anchoring)."""
        from wallet.anchoring import check_events

        events = [_flat_event(e) for e in log.events]
        return check_events(events, getattr(log, "anchors", []), node_did, self.ledger_key())

    def erase(self, node: str, *, node_ca: bytes | None = None) -> dict[str, Any]:
        """Ask ``node`` to erase everything it holds about this wallet's subject; the erasure
        receipt (``ledger.erasure``: the node's verified proof, its ledger entry and receipt),
        kept in the store. The signed request is stored before it is sent, so a retry after a
        failure sends the same request and gets the same proof."""
        return self.erase_routed(node, node_ca=node_ca)[0]

    def erase_routed(self, node: str, *, node_ca: bytes | None = None
                     ) -> tuple[dict[str, Any], str | None]:
        """``erase``, and the coordinator the request went through (None: straight to the
        node). When the node cannot be reached directly and a coordinator is set, the sealed
        request goes through it: the coordinator cannot read it, and the proof is the node's
        own, verified here as on the direct path."""
        from ledger.erasure import RECEIPT_FORMAT, issue_request

        node = node_address(node)
        self._use_node_ca(node, node_ca)
        _, NodeUnreachable = _node_errors()
        coordinator, via = None, None
        try:
            client = self._client(node)
            node_did = client.node_info().did
        except NodeUnreachable:
            via = self._coordinator_address()
            if via is None:
                raise
            coordinator = self._coordinator_client(via)
            try:
                # An erasure scans the node's files: give it the coordinator's longest wait.
                client = self._routed(coordinator, node, timeout=ERASE_ROUTED_TIMEOUT)
            except BaseException:
                coordinator.close()
                raise
            node_did = client.node.did
        try:
            request = self.store.erasure_request(node_did)
            if request is None:
                self.store.add_erasure(node_did, node, issue_request(self.identity, node_did))
                request = self.store.erasure_request(node_did)
            reply = client.erase(request, subject_salt=self._subject_salt().hex())
        finally:
            if coordinator is not None:
                coordinator.close()
        receipt = {"format": RECEIPT_FORMAT, "node_address": node, "proof": reply["proof"],
                   "ledger_entry": reply.get("ledger_entry"), "receipt": reply.get("receipt"),
                   "ledger": reply.get("ledger"), "sweep": reply.get("sweep")}
        self.store.set_erasure_receipt(node_did, receipt)
        return receipt, via

    def migrate(self, source: str | None = None, target: str | None = None, *,
                resume: bool = False, source_ca: bytes | None = None,
                target_ca: bytes | None = None) -> MigrationOutcome:
        """Move everything ``source`` holds about this wallet's subject to ``target``:
        A exports (signed by A), B imports under the customer's signed migration request and
        answers with its signed receipt, A erases with its proof. Each step is recorded in
        the store before the next begins, so a crash is finished (or rolled back) by the
        next call; the data stays at A unless B's import is confirmed (``ledger.migration``)."""
        source = None if source is None else node_address(source)
        target = None if target is None else node_address(target)
        record = self.store.unfinished_migration()
        if record is not None and not resume and (source, target) != (record["source"],
                                                                      record["target"]):
            raise InvalidInput(f"a migration from {record['source']} to {record['target']} is "
                               "unfinished: run `consent-wallet migrate --resume` first")
        if record is None:
            if resume or source is None or target is None:
                raise InvalidInput("no migration is unfinished: start one with `consent-wallet "
                                   "migrate --from NODE_A --to NODE_B`")
            if source == target:
                raise InvalidInput("--from and --to are the same node: nothing to move")
            record = self._start_migration(source, target, source_ca, target_ca)
        return self._advance_migration(record["id"], resumed=resume or record["state"] !=
                                       "started" or record["export"] is not None)

    def _start_migration(self, source: str, target: str, source_ca: bytes | None,
                         target_ca: bytes | None) -> dict[str, Any]:
        from ledger.migration import new_migration_id

        self._use_node_ca(source, source_ca)
        self._use_node_ca(target, target_ca)
        source_did = self._client(source).node_info().did
        target_did = self._client(target).node_info().did
        migration = new_migration_id()
        self.store.add_migration(migration, source, source_did, target, target_did)
        record = self.store.migration(migration)
        assert record is not None
        return record

    def _advance_migration(self, migration: str, *, resumed: bool) -> MigrationOutcome:
        from ledger.migration import issue_request

        NodeError, NodeUnreachable = _node_errors()
        record = self.store.migration(migration)
        assert record is not None
        source, target = record["source"], record["target"]
        if record["state"] == "started":  # 1. A's signed export, then our signed request
            export = self._client(source).export_document()
            request = issue_request(self.identity, source=record["source_did"],
                                    target=record["target_did"], migration=migration,
                                    export=export)
            self.store.update_migration(migration, "exported", request=request,
                                        export=self._seal_export(migration, export))
            record = self.store.migration(migration) or record
        if record["state"] == "exported":  # 2. B imports, or refuses: nothing moved
            digest_only = {"digest": record["request"]["export"]}
            try:
                receipt = self._client(target).import_customer(
                    record["request"], self._open_export(migration, record["export"]),
                    subject_salt=self._subject_salt().hex())
            except NodeUnreachable as exc:
                raise MigrationPending(
                    f"{_node_problem(target, exc)}; nothing was erased at {source} (your data "
                    "stays there): run `consent-wallet migrate --resume` when it is back"
                ) from None
            except NodeError as exc:
                note = f"{target} refused the import ({exc}); your data stays at {source}"
                self.store.update_migration(migration, "rolled-back", note=note,
                                            export=digest_only)
                return MigrationOutcome(migration, "rolled-back", source, target, note,
                                        resumed=resumed)
            # B confirmed: from here on the wallet keeps only the export's digest (the
            # request and B's signed receipt name it), never the customer's data.
            self.store.update_migration(migration, "imported", import_receipt=receipt,
                                        export=digest_only)
            record = self.store.migration(migration) or record
        if record["state"] == "imported":  # 3. A erases, with its proof
            try:
                erasure = self.erase(source)
            except NodeUnreachable as exc:
                raise MigrationPending(
                    f"{target} holds your data now, but {_node_problem(source, exc)}, so it "
                    "has not erased it yet: run `consent-wallet migrate --resume` when it is "
                    "back") from None
            self.store.update_migration(migration, "done",
                                        note=f"erased at {source}: {erasure['ledger']}")
        final = self.store.migration(migration)
        assert final is not None
        return MigrationOutcome(migration, final["state"], source, target, final["note"] or "",
                                resumed=resumed, import_receipt=final["import_receipt"],
                                erasure=self._erasure_receipt(final["source_did"]))

    def _seal_export(self, migration: str, export: dict[str, Any]) -> dict[str, Any]:
        """A's export as the wallet keeps it until B confirms the import (to resume after a
        crash): SM4-GCM under a key derived from the wallet's own private key, bound to the
        migration, so the customer's data is never at rest in clear in wallet.db."""
        from ledger.migration import export_digest

        nonce = secrets.token_bytes(EXPORT_NONCE_BYTES)
        sealed = SM4GCM(self._export_key()).encrypt(nonce, json.dumps(export).encode(),
                                                    migration.encode())
        return {"digest": export_digest(export), "sm4_gcm": (nonce + sealed).hex()}

    def _open_export(self, migration: str, kept: dict[str, Any]) -> dict[str, Any]:
        """The export ``_seal_export`` kept (as it was: its digest is the request's)."""
        if "sm4_gcm" not in kept:
            return kept  # a migration started before exports were sealed
        blob = bytes.fromhex(kept["sm4_gcm"])
        plain = SM4GCM(self._export_key()).decrypt(blob[:EXPORT_NONCE_BYTES],
                                                   blob[EXPORT_NONCE_BYTES:], migration.encode())
        return dict(json.loads(plain))

    def _export_key(self) -> bytes:
        return hmac_sm3(self.identity.signing_key.encode(), EXPORT_KEY_LABEL)[:16]

    def _erasure_receipt(self, node_did: str) -> dict[str, Any] | None:
        return dict(self.store.erasure_receipts_by_node().get(node_did) or {}) or None

    def export(self, node: str, out: Path, *, node_ca: bytes | None = None,
               progress: ProgressReport | None = None) -> dict[str, Any]:
        """Everything ``node`` holds about this wallet's subject, written as portable JSON.

        ``progress(label, n, total)`` hears of the work as it goes (``consent-wallet export``
        draws it on a terminal): the node's answer, then the rows, a batch at a time."""
        node = node_address(node)
        _refuse_wallet_file(self.home, Path(out))
        self._use_node_ca(node, node_ca)
        tell = progress or _no_progress
        tell("asking the node", 0, 1)
        data = self._client(node).export()
        tell("asking the node", 1, 1)
        document = {
            "format": "sovereign-fabric-export",
            "version": 1,
            "subject": self.identity.did,
            "node": node,
            "exported_at": iso(utcnow()),
            "data": data,
        }
        # The export is the customer's own data: written 0600 and atomically, like the keystore.
        write_private_file(Path(out), _export_text(document, tell).encode())
        return document


@dataclass(frozen=True)
class MigrationOutcome:
    """Where a migration ended: "done" (B holds the data, A erased it with its proof) or
    "rolled-back" (B refused: nothing moved), with what to tell the customer."""

    migration: str
    state: str
    source: str
    target: str
    note: str
    resumed: bool = False
    import_receipt: dict[str, Any] | None = None
    erasure: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"migration": self.migration, "state": self.state, "from": self.source,
                "to": self.target, "note": self.note, "resumed": self.resumed,
                "import_receipt": self.import_receipt, "erasure": self.erasure}


@dataclass(frozen=True)
class ReceiptFiles:
    """What ``write_receipts`` wrote, and what it could not because it is not anchored yet."""

    written: list[Path]
    pending: list[str]  # "grant ID" / "revocation of ID" not yet in the ledger


@dataclass(frozen=True)
class AuditKey:
    """What a compliance officer needs to pick this customer's entries out of the ledger."""

    did: str
    salt: str  # 64 hex characters
    subject_commitment: str


def write_credential(home: Path, grant_id: str, out: Path) -> dict[str, Any]:
    """Write the signed grant credential ``grant_id`` as this wallet issued it to ``out``
    (0600, atomically; never over a wallet file), for a compliance officer's ``sov-audit
    verify --grant``: it names the key that writes the grant's ledger entries. No
    passphrase: the node holds the same document. The credential is returned."""
    _refuse_wallet_file(Path(home), Path(out))
    store = open_store(home)
    try:
        record = store.grant(grant_id)
    finally:
        store.close()
    if record is None:
        raise UnknownGrant(f"no grant {grant_id} in this wallet: `consent-wallet grants` "
                           "lists the ids")
    write_private_file(Path(out), json.dumps(record.credential, indent=2).encode())
    return dict(record.credential)


def write_receipts(home: Path, out: Path) -> ReceiptFiles:
    """Write every ledger receipt the wallet holds into the folder ``out``, one file each
    (``grant-ID.json``, ``revocation-ID.json``), as ``sov-audit verify`` reads them.

    Read-only on the wallet: no passphrase, since the receipts hold digests and the salted
    commitment only. Each file is written whole (atomically), 0600.
    """
    store = open_store(home)
    try:
        items: list[tuple[str, str, dict[str, Any] | None]] = [
            ("grant", g.id, g.ledger_receipt) for g in store.grants()
            if g.delivered_at is not None]
        items += [("revocation", r.grant_id, r.ledger_receipt) for r in store.revocations()
                  if r.delivery == DELIVERED]
        # Erasure receipts: the node's proof with the ledger's receipt of its entry.
        items += [("erasure", did, receipt if receipt and receipt.get("receipt") else None)
                  for did, receipt in store.erasure_receipts()]
        items += _migration_receipts(store)
    finally:
        store.close()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"--out {out} is a file; give a folder (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    written, pending = [], []
    for kind, grant_id, receipt in items:
        if receipt is None:
            pending.append(f"{kind} {grant_id}" if kind == "grant" else
                           f"erasure at {grant_id}" if kind == "erasure" else
                           f"{kind} of {grant_id}")
            continue
        path = out / f"{kind}-{_file_safe(grant_id)}.json"
        write_private_file(path, json.dumps(receipt, indent=2).encode())
        written.append(path)
    return ReceiptFiles(written, pending)


def _migration_receipts(store: WalletStore) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Each finished migration's receipt (``ledger.migration``): the customer's request, A's
    signed export, B's signed import receipt and A's erasure receipt."""
    from ledger.migration import RECEIPT_FORMAT

    erasures = store.erasure_receipts_by_node()
    return [("migration", m["id"], {"format": RECEIPT_FORMAT, "from": m["source"],
                                    "to": m["target"], "request": m["request"],
                                    "export": m["export"], "import": m["import_receipt"],
                                    "erasure": erasures.get(m["source_did"])})
            for m in store.migrations() if m["state"] == "done"]


def _file_safe(grant_id: str) -> str:
    """``urn:uuid:X`` -> ``X``: a grant id as a file name on every system."""
    return grant_id.removeprefix("urn:uuid:").removeprefix("did:key:").replace(":", "-")\
        .replace("/", "-")


def read_node_document(path: Path) -> str:
    """The DID pinned by a node's signed identity document (``sov-node identity``)."""
    from consent.errors import RotationError
    from consent.rotation import verify_node_document

    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError:
        raise InvalidInput(f"cannot read the node document {path}") from None
    except ValueError:
        raise InvalidInput(f"{path} is not JSON: give the file `sov-node identity` "
                           "printed") from None
    try:
        return verify_node_document(document)
    except RotationError as exc:
        raise InvalidInput(f"{path}: {exc}") from None


def check_node_did(did: str) -> str:
    """A node DID the customer typed: a did:key this project can resolve."""
    from consent.did import resolve
    from consent.errors import DIDError

    try:
        resolve(did)
    except DIDError:
        raise InvalidInput(f"{did[:80]!r} is not a did:key: give the node's DID as its "
                           "operator published it (did:key:z6Mk...)") from None
    return did


def _close(client: Any) -> None:
    close = getattr(client, "close", None)
    if close is not None:
        close()


def _node_problem(address: str, exc: Exception) -> str:
    """The node error as a clause of our own sentence (the client's own text may claim that
    "nothing was changed", which is not true once the wallet saved a signed statement)."""
    _, NodeUnreachable = _node_errors()
    if isinstance(exc, NodeUnreachable):
        code = getattr(getattr(exc, "code", None), "name", "UNAVAILABLE")
        return f"the node at {address} cannot be reached ({code})"
    return f"the node at {address} refused: {exc}"


# The wallet's own files: an export must never be written over them.
WALLET_FILES = (KEYSTORE_FILE, WalletStore.FILENAME, WalletStore.FILENAME + "-wal",
                WalletStore.FILENAME + "-shm", WalletStore.FILENAME + "-journal")


ProgressReport = Callable[[str, int, "int | None"], None]
"""``(label, n, total)``: ``n`` more units of the task ``label`` of ``total``
(consent.commandline.Progress.advance is one)."""
EXPORT_BATCH = 1000  # rows encoded between two progress reports


def _no_progress(_label: str, _n: int, _total: int | None) -> None:
    return None


def _export_text(document: dict[str, Any], tell: ProgressReport) -> str:
    """The export as indented JSON, each dataset's rows one per line and encoded a batch at a
    time, so that a large export's writing can be shown as it goes."""
    datasets = document["data"].get("datasets") if isinstance(document["data"], dict) else None
    if not isinstance(datasets, dict) or not datasets:
        return json.dumps(document, indent=2, default=str)
    total = sum(len(rows) for rows in datasets.values())
    marker = f"rows-{uuid.uuid4().hex}"  # a string no export can hold, replaced below
    text = json.dumps({**document, "data": {**document["data"], "datasets": marker}},
                      indent=2, default=str)
    tell("writing rows", 0, total)
    parts = []
    for name, rows in datasets.items():
        lines: list[str] = []
        for start in range(0, len(rows), EXPORT_BATCH):
            batch = rows[start:start + EXPORT_BATCH]
            lines.extend("        " + json.dumps(row, default=str) for row in batch)
            tell("writing rows", len(batch), total)
        inner = "\n" + ",\n".join(lines) + "\n      " if lines else ""
        parts.append(f"      {json.dumps(name)}: [{inner}]")
    return text.replace(json.dumps(marker), "{\n" + ",\n".join(parts) + "\n    }", 1)


def _refuse_wallet_file(home: Path, out: Path) -> None:
    target = out.expanduser().resolve()
    for name in WALLET_FILES:
        if target == (home / name).resolve():
            raise InvalidInput(
                f"--out {out} is your wallet's own {name}, which writing there would destroy; "
                "choose another file"
            )


def iso_seconds(moment: datetime) -> str:
    return utc_text(moment)


def _receipt_json(receipt: Any) -> dict[str, Any]:
    for name in ("to_json", "to_dict", "as_dict"):
        method = getattr(receipt, name, None)
        if method is not None:
            return dict(method())
    if isinstance(receipt, dict):
        return receipt
    return {"repr": repr(receipt)}


def _status_json(status: Any) -> dict[str, Any]:
    expires = getattr(status, "expires", None)
    return {
        "status": str(status.status),
        "queries_used": getattr(status, "queries_used", None),
        "max_queries": getattr(status, "max_queries", None),
        "epsilon_spent": getattr(status, "epsilon_spent", None),
        "dp_epsilon": getattr(status, "dp_epsilon", None),
        "epsilon_budget": getattr(status, "epsilon_budget", None),
        "expires": iso(expires) if isinstance(expires, datetime) else expires,
    }


def _as_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        return from_iso(value)
    return utcnow()


ANSWERED = "answered"
NOTHING_RELEASED = "asked, nothing released"
LEFT_OUT = "left out: budget spent"


def outcome_label(event: dict[str, Any]) -> str:
    """What an access event meant for you: "answered" (your data was read and something was
    released), "asked, nothing released" (read, nothing came out), "left out: budget spent"
    (the node proved it left your grant out because its privacy budget was spent), or the
    node's refusal."""
    if event.get("own_left_out") and not event.get("own_grants"):
        return LEFT_OUT
    if event.get("outcome") == "answered":
        return NOTHING_RELEASED if event.get("released") is False else ANSWERED
    return str(event.get("outcome") or "unknown")


def grants_used(event: dict[str, Any], mine: set[str]) -> tuple[list[str], int]:
    """(your grants an access event used, how many other customers' grants it used).

    Events that commit to their grant set by a Merkle root (v2) carry your grants as the
    members the node proved (``own_grants``) and only a count of the rest; older events
    listed every grant id, of which only yours (``mine``) are shown.
    """
    if "grant_count" in event:
        own = [str(g) for g in event.get("own_grants") or []]
        return own, max(int(event["grant_count"]) - len(own), 0)
    listed = [str(g) for g in event.get("grant_ids") or []]
    own = [g for g in listed if g in mine]
    return own, len(listed) - len(own)


def _flat_event(event: Any) -> dict[str, Any]:
    """An access event as one flat dict (the node nests the hashed fields under ``body``)."""
    event = dict(event) if isinstance(event, dict) else dict(vars(event))
    body = event.pop("body", None)
    return {**body, **event} if isinstance(body, dict) else event


def _event_verified(log: Any, index: int, event: dict[str, Any]) -> bool:
    verified = getattr(log, "verified", None)
    if isinstance(verified, dict):
        return bool(verified.get(int(event["seq"]), False))
    if isinstance(verified, list | tuple):
        return bool(verified[index])
    if "verified" in event:
        return bool(event["verified"])
    return bool(verified)


def _access_records(address: str, log: Any, checks: dict[int, Any]) -> list[AccessRecord]:
    records = []
    for index, raw in enumerate(log.events):
        event = _flat_event(raw)
        check = checks.get(int(event["seq"]))
        records.append(AccessRecord(
            node_address=address, seq=int(event["seq"]), time=_as_time(event.get("time")),
            event=event, verified=_event_verified(log, index, event),
            ledger_verified=check.verified if check else None,
            ledger_status=check.status if check else None,
            ledger_detail=check.detail if check else None,
        ))
    return records


def _status_of(record: GrantRecord, now: datetime, revocation_pending: bool = False) -> str:
    """The grant's state in consent.grantstate's words (the node's, plus delivery)."""
    node_status = (record.last_status or {}).get("status")
    if node_status == grantstate.REVOKED:
        return grantstate.REVOKED
    if revocation_pending and record.delivery == DELIVERED:
        # Signed and saved, but the node has not applied it: the grant still works there.
        return grantstate.EXPIRED if record.expires <= now else REVOCATION_PENDING
    if record.revoked_at is not None:
        return grantstate.REVOKED
    if record.delivery == REFUSED:
        return grantstate.REFUSED
    if record.expires <= now:
        return grantstate.EXPIRED
    if record.delivery == PENDING:
        return grantstate.PENDING_DELIVERY
    not_before = record.credential.get("validFrom")
    if isinstance(not_before, str) and from_iso(not_before) > now:
        return grantstate.NOT_YET_VALID
    return grantstate.ACTIVE


def grant_views(
    store: WalletStore, *, now: datetime | None = None, fresh: set[str] | None = None
) -> list[GrantView]:
    """Grant views from the local store (the dashboard uses this without a passphrase)."""
    now = now or datetime.now(UTC)
    fresh = fresh or set()
    nodes = {n.address: n for n in store.nodes()}
    pending = {r.grant_id for r in store.revocations() if r.delivery == PENDING}
    views = []
    for record in store.grants():
        node = nodes.get(record.node_address)
        status = record.last_status or {}
        views.append(GrantView(
            id=record.id, status=_status_of(record, now, record.id in pending),
            requester=record.requester,
            purpose=record.purpose, scopes=record.scopes, node_address=record.node_address,
            node_name=node.name if node else None, node_region=node.region if node else None,
            node_residency=node.residency if node else None, issued=record.issued,
            expires=record.expires, delivery=record.delivery,
            queries_used=status.get("queries_used"), max_queries=record.max_queries,
            epsilon_spent=status.get("epsilon_spent"), dp_epsilon=record.dp_epsilon,
            status_at=record.status_at, status_fresh=record.id in fresh,
            ledger_anchored=record.ledger_receipt is not None,
            epsilon_budget=status.get("epsilon_budget"),
        ))
    return views
