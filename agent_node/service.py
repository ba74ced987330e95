"""The ``sovereign.v1.AgentNode`` gRPC service (protos/sovereign/v1/node.proto).

Every call but GetNodeInfo carries a sealed envelope in the node's crypto profile: a NaCl box
(consent.envelope) in ``intl``; in ``gm`` an SM2-authenticated session with SM4-GCM messages
(consent.envelope_gm), whose SM2 work is done once per session, the caller's SM2 key being
learnt from an SM2KeyBinding its did:key signed. The node opens the envelope with its own key,
learns the caller's DID from it, checks version, method, nonce and time (replay guard), runs
the handler and seals a node-signed response back to the caller (gm: in the same session).
Refusals are gRPC statuses with a sentence saying what was wrong and how to fix it; nothing
is changed by a refused call. Logs are structured (JSON) and carry DIDs, methods, codes and
timings only: never a secret, a customer value or a query's filter values.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from agent_node import accesslog, grantstore
from agent_node.engine import QueryEngine
from agent_node.errors import (
    InvalidRequest,
    PermissionDenied,
    PreconditionFailed,
    RequestError,
    Unauthenticated,
)
from agent_node.grantstore import GrantStore
from agent_node.home import NodeHome, rotations
from agent_node.nonces import DurableReplayGuard
from agent_node.vault import (
    Vault,
    encrypted_column,
    iso,
    plain_column,
    table_name,
)
from agent_node.vaultcrypto import decrypt_cell
from consent import protocol
from consent.canonical import canonical_sha256, canonicalize
from consent.envelope_gm import GMSessionCache
from consent.errors import ReplayError
from consent.identity import Identity
from consent.integrity import SM2_JCS, sign_document
from ledger.events import subject_commitment
from protos.sovereign.v1 import node_pb2, node_pb2_grpc

VERSION = 1
SERVICE_NAME = "sovereign.v1.AgentNode"
PROFILE_BYTES = protocol.PROFILE_BYTES  # byte 1 of every envelope
log = logging.getLogger("agent_node.service")


class Metrics:
    """Prometheus metrics in a registry of their own (several nodes may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("sov_node_requests", "RPCs handled", ["method", "code"],
                                registry=self.registry)
        self.latency = Histogram("sov_node_request_seconds", "RPC latency", ["method"],
                                 registry=self.registry)
        self.suppressed = Counter("sov_node_suppressed_groups", "groups withheld (k, overlap)",
                                  registry=self.registry)


def _parse_ts(value: Any) -> datetime:
    try:
        return protocol.parse_ts(value)
    except protocol.ProtocolError as exc:
        raise _refusal(exc) from None


def _refusal(exc: protocol.ProtocolError) -> RequestError:
    """The gRPC refusal of a protocol error (same sentence, same reason)."""
    kind = {protocol.WrongProfile: PreconditionFailed,
            protocol.BadEnvelope: Unauthenticated}.get(type(exc), InvalidRequest)
    return kind(str(exc), reason=exc.reason)


class NodeService(node_pb2_grpc.AgentNodeServicer):
    def __init__(self, home: NodeHome, vault: Vault, engine: QueryEngine, grants: GrantStore,
                 metrics: Metrics | None = None) -> None:
        self.home, self.vault, self.engine, self.grants = home, vault, engine, grants
        self.identity = home.identity
        self.rotations = rotations(home.path)  # signed by each retired key (sov-node rotate-key)
        self.replay = DurableReplayGuard(vault, home.config.replay_window)  # across workers
        self.metrics = metrics or Metrics()
        self.profile = home.config.profile
        self.sessions = GMSessionCache(open_window=home.config.replay_window,
                                       clock_skew=home.config.clock_skew)
        # Query answers skip the SM2 proof unless the operator asks for it: no SM2 per query.
        self._answer_identity = (self.identity if home.config.gm_sm2_answer_proofs
                                 else Identity(self.identity.signing_key))
        self.sweeper: Any = None  # erasures' whole-home sweeps, off the request (on the first)

    # -- plumbing -------------------------------------------------------------------------------

    def _unseal(self, request: node_pb2.SealedRequest, relayed: bool = False
                ) -> tuple[str, bytes, protocol.ReplyContext]:
        """(caller DID, plaintext, what to answer in) of a request's envelope; ``relayed``
        (RelayRevoke) opens a gm request in a session of its own, whatever its age."""
        try:
            return protocol.open_request(
                request.envelope, request.key_binding, self.identity, self.profile,
                self.sessions, max_age=self.home.config.replay_window,
                clock_skew=self.home.config.clock_skew, relayed=relayed)
        except protocol.ProtocolError as exc:
            raise _refusal(exc) from None

    def _open(self, method: str, request: node_pb2.SealedRequest, replay: bool = True
              ) -> tuple[str, dict[str, Any], protocol.ReplyContext]:
        if request.version != VERSION:
            raise InvalidRequest(f"unsupported request version {request.version}; this node "
                                 f"speaks version {VERSION}")
        caller, plaintext, session_id = self._unseal(request, relayed=not replay)
        try:
            return caller, self._message(method, plaintext, replay), session_id
        except RequestError as exc:
            exc.caller = caller  # known from here on: the refusal is logged under it
            raise

    def _message(self, method: str, plaintext: bytes, replay: bool = True) -> dict[str, Any]:
        """The opened request, checked: JSON, version, method, body, and a fresh nonce."""
        try:
            message = protocol.parse_request(plaintext, method)
        except protocol.ProtocolError as exc:
            raise _refusal(exc) from None
        nonce = message.get("nonce")
        if not replay:
            return message  # a relayed revocation (RelayRevoke): applying it again is harmless
        try:
            # A Query's nonce is spent with its access event (engine), others' right here.
            self.replay.check(str(nonce) if nonce else "", _parse_ts(message.get("ts")),
                              record=method != "Query")
        except ReplayError as exc:
            refused = Unauthenticated(f"{exc}", reason="replay")
            refused.query = message["body"].get("query")
            raise refused from None
        return message

    def _respond(self, method: str, caller: str, nonce: str, body: dict[str, Any],
                 session_id: protocol.ReplyContext = None) -> node_pb2.SealedResponse:
        signer = self._answer_identity if method == "Query" else self.identity
        payload = protocol.sign_reply(method, nonce, iso(datetime.now(UTC)), body, signer)
        try:
            envelope = protocol.seal_reply(payload, self.identity, caller, self.sessions,
                                           session_id)
        except protocol.ProtocolError as exc:
            raise _refusal(exc) from None
        return node_pb2.SealedResponse(version=VERSION, envelope=envelope)

    def _handle(self, method: str, request: node_pb2.SealedRequest, context: grpc.ServicerContext,
                handler: Callable[[str, dict[str, Any]], dict[str, Any]], replay: bool = True
                ) -> node_pb2.SealedResponse:
        started = time.perf_counter()
        caller = "-"
        code = grpc.StatusCode.OK
        try:
            caller, message, session_id = self._open(method, request, replay)
            body = handler(caller, message["body"])
            return self._respond(method, caller, str(message["nonce"]), body, session_id)
        except RequestError as exc:
            code = exc.code
            caller = exc.caller or caller
            self._log_refused(method, caller, exc)
            context.abort(exc.code, str(exc))
            raise  # unreachable: abort raises
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(method, code.name).inc()
            self.metrics.latency.labels(method).observe(elapsed)
            if log.isEnabledFor(logging.INFO):
                log.info(orjson.dumps({"event": "rpc", "method": method, "caller": caller,
                                       "code": code.name, "ms": round(elapsed * 1000, 2)}
                                      ).decode())

    def _log_refused(self, method: str, caller: str, exc: RequestError) -> None:
        """Write a refusal to the access log when the engine did not: a Query or an Export
        refused before its handler ran or by it, and a replay of any call. Refusals whose
        sender is unknown (an envelope that does not open) have no one to log under."""
        if caller == "-" or (method == "Query" and exc.caller is None):
            return  # no known sender, or the engine logged it with the query
        if exc.caller is not None and (method in ("Query", "Export") or exc.reason == "replay"):
            self.engine.log_refusal(exc.query if method == "Query" else {}, caller,
                                    datetime.now(UTC), exc)
        elif method == "Export":
            self.engine.log_refusal({}, caller, datetime.now(UTC), exc)

    # -- RPCs -----------------------------------------------------------------------------------

    def GetNodeInfo(self, request: node_pb2.NodeInfoRequest, context: grpc.ServicerContext
                    ) -> node_pb2.NodeInfoResponse:
        return node_pb2.NodeInfoResponse(version=VERSION,
                                         document=canonicalize(self.node_info()))

    def node_info(self) -> dict[str, Any]:
        config = self.home.config
        with self.vault.connection() as conn:
            head = accesslog.head(conn)
        datamap = self.engine.datamap
        datasets = {name: {"columns": {c.name: {"type": c.type, "scope": c.scope}
                                       for c in ds.columns.values()}}
                    for name, ds in datamap.datasets.items()}
        document = {
            "type": "NodeInfo", "v": VERSION, "did": self.identity.did, "name": config.name,
            "region": config.region, "residency": config.residency, "profile": config.profile,
            "k_threshold": self.engine.settings.k, "max_ttl_hours": config.max_ttl_hours,
            "access_log_head": head, "datasets": datasets, "issued": iso(datetime.now(UTC)),
            "privacy": self.engine.privacy_info(),
        }
        if self.rotations:
            # Wallets that pinned an older DID follow these (consent.rotation) to this one.
            document["rotations"] = self.rotations
        if self.profile == "gm" and self.identity.sm2 is not None:
            # The key gm sessions are opened to; the chained proof binds it to the node's DID.
            document["sm2PublicKey"] = self.identity.sm2.public_key().to_hex()
        return sign_document(document, self.identity)

    def Query(self, request: node_pb2.SealedRequest, context: grpc.ServicerContext
              ) -> node_pb2.SealedResponse:
        return self._handle("Query", request, context, self._query)

    def SubmitGrant(self, request: node_pb2.SealedRequest, context: grpc.ServicerContext
                    ) -> node_pb2.SealedResponse:
        return self._handle("SubmitGrant", request, context, self._submit_grant)

    def Revoke(self, request: node_pb2.SealedRequest, context: grpc.ServicerContext
               ) -> node_pb2.SealedResponse:
        return self._handle("Revoke", request, context, self._revoke)

    def RelayRevoke(self, request: node_pb2.SealedRequest, context: grpc.ServicerContext
                    ) -> node_pb2.SealedResponse:
        # A wallet's sealed Revoke relayed by the coordinator, maybe long after it was sealed:
        # the replay window is waived because a revocation applied twice changes nothing (a
        # gm one opens a session of its own, since any other may be gone by then).
        return self._handle("Revoke", request, context, self._revoke, replay=False)

    def GrantStatus(self, request: node_pb2.SealedRequest, context: grpc.ServicerContext
                    ) -> node_pb2.SealedResponse:
        return self._handle("GrantStatus", request, context, self._grant_status)

    def ListAccessEvents(self, request: node_pb2.SealedRequest, context: grpc.ServicerContext
                         ) -> node_pb2.SealedResponse:
        return self._handle("ListAccessEvents", request, context, self._access_events)

    def Export(self, request: node_pb2.SealedRequest, context: grpc.ServicerContext
               ) -> node_pb2.SealedResponse:
        return self._handle("Export", request, context, self._export)

    def Erase(self, request: node_pb2.SealedRequest, context: grpc.ServicerContext
              ) -> node_pb2.SealedResponse:
        return self._handle("Erase", request, context, self._erase)

    def Import(self, request: node_pb2.SealedRequest, context: grpc.ServicerContext
               ) -> node_pb2.SealedResponse:
        return self._handle("Import", request, context, self._import)

    # -- handlers -------------------------------------------------------------------------------

    def _query(self, caller: str, body: dict[str, Any]) -> dict[str, Any]:
        if "report" in body:
            return self._report(caller, body)
        refused = self._region_refusal(body.get("query"))
        if refused is not None:
            raise refused
        answer = self.engine.run(body.get("query"), caller, nonce=self.replay.pending())
        return {"answer": answer}

    def _region_refusal(self, query: Any) -> PermissionDenied | None:
        regions = query.get("regions") if isinstance(query, dict) else None
        if isinstance(regions, list) and regions and self.home.config.region not in regions:
            # The requester named the regions it may reach inside the sealed query, so no
            # router can send its question to a node elsewhere: refused before any data.
            return PermissionDenied(f"this node is in region {self.home.config.region!r}, "
                                    "outside the regions the query allows; ask nodes in "
                                    "those regions", reason="region")
        return None

    def _report(self, caller: str, body: dict[str, Any]) -> dict[str, Any]:
        """A report (consent.protocol): each query answered or refused as if asked alone,
        all in one reply. A report that is not a list, empty or over the node's limit is
        refused whole, logged once, with nothing run and nothing debited."""
        nonce = self.replay.pending()
        try:
            queries = protocol.report_queries(body, self.home.config.max_report_queries)
        except protocol.ProtocolError as exc:
            refused = _refusal(exc)
            self.engine.log_refusal({}, caller, datetime.now(UTC), refused, nonce)
            raise refused from None
        results = self.engine.run_report(queries, caller, nonce=nonce,
                                         refuse=self._region_refusal)
        return {"report": [
            protocol.report_refusal(r.code.name, r.reason, str(r))
            if isinstance(r, RequestError) else protocol.report_answer(r) for r in results]}

    def _require_sm2_chain(self, document: Any, what: str) -> None:
        """A gm node's policy: grants and revocations carry the SM2 proof chain.

        Only the shape is checked here; the grant store verifies every proof present (both of
        a chain), so this equals ``verify_document(..., require_sm2=True)`` without paying the
        SM2 verification twice.
        """
        if self.profile != "gm" or not isinstance(document, dict):
            return
        proof = document.get("proof")
        if not (isinstance(proof, list) and proof and isinstance(proof[0], dict)
                and proof[0].get("cryptosuite") == SM2_JCS):
            raise Unauthenticated(f"this gm node requires the {what} to carry an SM2 proof "
                                  f"({SM2_JCS}) beside the Ed25519 one; sign it with a gm "
                                  "wallet (consent-wallet init --profile gm)", reason="no-sm2")

    def _submit_grant(self, caller: str, body: dict[str, Any]) -> dict[str, Any]:
        self._require_sm2_chain(body.get("credential"), "grant")
        salt = body.get("subject_salt")  # optional: for salted commitments in ledger heads
        if salt is not None and not accesslog.valid_salt(salt):
            raise InvalidRequest("subject_salt must be 64 hex characters (32 random bytes)")
        grant, accepted_at = self.grants.submit(body.get("credential"))
        if salt is not None and grant.subject == caller:
            with self.vault.transaction() as conn:
                accesslog.remember_salt(conn, caller, salt, accepted_at)
        reply = {"grant_id": grant.id, "accepted_at": accepted_at, "digest": grant.digest,
                 "expires": iso(grant.expires)}
        if "ledger_entry" in body:
            from ledger.customer import grant_entry

            if salt is None or grant.subject != caller:
                return {**reply, "ledger_refusal": "only the grant's subject, sending its "
                        "subject_salt, gets its ledger entry endorsed"}
            commitment = subject_commitment(caller, bytes.fromhex(salt))
            expected = grant_entry(grant, commitment, self.home.identity.did)
            reply.update(self._endorse(body["ledger_entry"], expected, grant.ledger_key))
        return reply

    def _revoke(self, caller: str, body: dict[str, Any]) -> dict[str, Any]:
        self._require_sm2_chain(body.get("revocation"), "revocation")
        grant_id, revoked_at = self.grants.revoke(body.get("revocation"))
        reply = {"grant_id": grant_id, "revoked_at": revoked_at}
        if "ledger_entry" in body:  # the revocation is in effect whatever the entry says
            reply.update(self._endorse_revocation(body["ledger_entry"], body["revocation"],
                                                  grant_id))
        return reply

    def _endorse_revocation(self, entry: Any, document: dict[str, Any], grant_id: str
                            ) -> dict[str, str]:
        from ledger.customer import revocation_entry

        with self.vault.connection() as conn:
            found = grantstore.credential(conn, grant_id)
            assert found is not None  # the grant was just revoked here, so it is held
            subject, digest, credential = found
            salt = accesslog.salt_of(conn, subject)
        if salt is None:
            return {"ledger_refusal": "this node holds no subject_salt of the grant's subject"}
        ledger_key = json.loads(credential)["credentialSubject"].get("ledgerKey")
        expected = revocation_entry(canonical_sha256(document), digest,
                                    subject_commitment(subject, bytes.fromhex(salt)),
                                    self.home.identity.did)
        return self._endorse(entry, expected, ledger_key)

    def _endorse(self, entry: Any, expected: dict[str, Any], ledger_key: str | None
                 ) -> dict[str, str]:
        """The node's endorsement of a customer's ledger entry (``ledger.customer``), or the
        sentence saying why not; the grant or revocation stands either way."""
        from ledger.customer import EndorsementRefused, endorse

        try:
            return {"ledger_endorsement": endorse(entry, expected, ledger_key,
                                                  self.home.identity)}
        except EndorsementRefused as exc:
            return {"ledger_refusal": str(exc)}

    def _grant_status(self, caller: str, body: dict[str, Any]) -> dict[str, Any]:
        grant_ids = body.get("grant_ids") or []
        if not isinstance(grant_ids, list) or not all(isinstance(g, str) for g in grant_ids):
            raise InvalidRequest("grant_ids must be a list of grant id strings")
        return {"grants": self.grants.status(caller, grant_ids)}

    def _bound_sids(self, conn: Any, caller: str) -> list[int]:
        sids = self.vault.sids_for_did(conn, caller)
        if not sids:
            raise PermissionDenied("the caller's DID is not bound to any customer at this node; "
                                   "the operator binds it with 'sov-node subjects bind'",
                                   reason="unbound-subject")
        return sids

    def _access_events(self, caller: str, body: dict[str, Any]) -> dict[str, Any]:
        since = body.get("since")
        if since is not None:
            since = iso(_parse_ts(since))
        with self.vault.connection() as conn:
            sids = self._bound_sids(conn, caller)
            grant_ids = grantstore.ids_of(conn, caller)
            events, chain = accesslog.events_for(conn, sids, grant_ids, since)
            head = accesslog.signed_head(conn, self.identity)
            anchors = accesslog.anchors_covering(conn, [e["body"]["seq"] for e in events])
        return {"events": events, "chain": chain, "head": head, "anchors": anchors}

    def _erase(self, caller: str, body: dict[str, Any]) -> dict[str, Any]:
        from agent_node.erasure import Erasure, Sweeper

        outcome = Erasure(self.home, self.vault).erase(
            body.get("request"), caller=caller, salt_hex=body.get("subject_salt"))
        if outcome.sweep is not None and outcome.sweep.get("state") == "pending":
            self.sweeper = self.sweeper or Sweeper(self.home, self.vault)
            self.sweeper.request()
        return outcome.to_json()

    def _import(self, caller: str, body: dict[str, Any]) -> dict[str, Any]:
        from agent_node.importstore import ImportStore

        return {"receipt": ImportStore(self.home, self.vault).import_customer(caller, body)}

    def _export(self, caller: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.vault.connection() as conn:
            sids = self._bound_sids(conn, caller)
            refs = self.vault.refs_for_sids(conn, sids)
            datasets = {name: self._export_rows(conn, ds, sids)
                        for name, ds in self.engine.datamap.datasets.items()
                        if self.vault.dataset_ready(conn, ds)}
            grants = grantstore.credentials_of(conn, caller)
            grant_ids = [g["id"] for g in grants]
            events, _ = accesslog.events_for(conn, sids, grant_ids, None)
        return {"export": {
            "subject": caller, "node": self.identity.did, "subject_refs": refs,
            "datasets": datasets, "grants": grants,
            "grant_status": self.grants.status(caller, []),
            "access_events": [e["body"] for e in events],
            # Per event seq: inclusion proofs of this customer's grant ids and subject refs in
            # the event's Merkle-committed sets (accesslog.membership_proofs).
            "access_event_proofs": {str(e["body"]["seq"]): e["proofs"] for e in events
                                    if "proofs" in e},
            "exported_at": iso(datetime.now(UTC)),
        }}

    def _export_rows(self, conn: Any, dataset: Any, sids: list[int]) -> list[dict[str, Any]]:
        rows = []
        names = list(dataset.columns.values())
        select = ", ".join(["row_id", "sid", *(
            encrypted_column(c.name) if c.encrypted else plain_column(c.name) for c in names)])
        for sid in sids:
            cipher = self.vault.keys.cell_cipher(self.vault.data_key(conn, sid))
            for row in conn.execute(f'SELECT {select} FROM "{table_name(dataset.name)}" '
                                    "WHERE sid = ?", (sid,)):
                record = {}
                for column, value in zip(names, row[2:], strict=True):
                    if column.encrypted and value is not None:
                        aad = f"{dataset.name}|{column.name}|{row[0]}".encode()
                        value = decrypt_cell(cipher, value, aad)
                    record[column.name] = value
                rows.append(record)
        return rows


def add_to_server(service: NodeService) -> Callable[[grpc.Server], None]:
    return lambda server: node_pb2_grpc.add_AgentNodeServicer_to_server(service, server)
