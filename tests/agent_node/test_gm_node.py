"""The ``gm`` (national-standard) profile end to end against a real ``sov-node serve`` process:
gm wallet grant -> gm node -> gm requester query in an SM2-authenticated SM4-GCM session ->
node-signed answer verified -> access log; and every way a gm session can be refused
(tampered opening, wrong SM2 key, forged or missing key binding, unknown session, replay),
profile mismatch both ways, and the gm node's SM2-proof policy on grants and revocations.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent_node.client import NodeClient, NodeError
from agent_node.home import load_home
from agent_node.requester import Requester
from consent.canonical import canonicalize
from consent.envelope import seal
from consent.envelope_gm import (
    KIND_OPEN,
    KIND_REQUEST,
    PROFILE_GM,
    GMSession,
    GMSessionCache,
    issue_key_binding,
)
from consent.grants import issue_grant, issue_revocation
from consent.identity import Identity
from consent.integrity import EDDSA_JCS, SM2_JCS, verify_document
from consent.sm import SM2PrivateKey
from protos.sovereign.v1 import node_pb2, node_pb2_grpc
from protos.transport import secure_channel
from tests.agent_node.conftest import (
    BIN,
    DATASET_TOML,
    PASSPHRASE,
    NodeProcess,
    bind_all,
    env,
    run_cli,
    serve,
    set_privacy,
    sqlite_source,
    stop,
)

GM_WALLETS = 8  # customers C000..C007, 6 contacts each: enough for k = 5, SM2 is slow
PURPOSE = "marketing-analytics"
COUNT = {"dataset": "contacts", "purpose": PURPOSE, "measures": ["count", "avg:age"]}


def _home(tmp: Path, rows: list[dict[str, Any]], profile: str) -> Path:
    home = tmp / "node"
    run_cli("sov-node", "init", "--home", str(home), "--name", f"{profile}-node",
            "--region", "cn-test", "--profile", profile)
    (home / "datamap.toml").write_text(sqlite_source(tmp, rows) + DATASET_TOML)
    run_cli("sov-node", "sync", "--home", str(home))
    # Threshold mode: these tests compare exact answers across crypto profiles and workers.
    set_privacy(home, "threshold")
    return home


def _grant(node: NodeProcess, wallet: Identity, requester: Identity) -> dict[str, Any]:
    return issue_grant(wallet, requester=requester.did, nodes=[node.did], purpose=PURPOSE,
                       scopes=["transaction"], ttl=timedelta(hours=24))


@pytest.fixture(scope="module")
def gm_node(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]
            ) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("gm-node")
    home = _home(tmp, bank_rows, "gm")
    wallets = [Identity.generate("gm") for _ in range(GM_WALLETS)]
    bind_all(home, wallets)
    node = serve(home)
    node.wallets = wallets
    yield node
    stop(node)


@pytest.fixture(scope="module")
def requester() -> Identity:
    return Identity.generate("gm")


@pytest.fixture(scope="module")
def granted(gm_node: NodeProcess, requester: Identity) -> list[str]:
    """Every gm wallet grants the gm requester, each through its own gm session."""
    ids = []
    for wallet in gm_node.wallets:
        with gm_node.client(wallet) as client:
            ack = client.submit_grant(_grant(gm_node, wallet, requester))
            # The node's acknowledgement carries its SM2 proof beside the Ed25519 one.
            assert [p["cryptosuite"] for p in ack.document["proof"]] == [SM2_JCS, EDDSA_JCS]
            ids.append(ack.grant_id)
    return ids


@pytest.fixture
def stub(gm_node: NodeProcess) -> Iterator[node_pb2_grpc.AgentNodeStub]:
    channel = secure_channel(gm_node.address, gm_node.ca_pem)
    yield node_pb2_grpc.AgentNodeStub(channel)
    channel.close()


def _node_identity(node: NodeProcess) -> Identity:
    return load_home(node.home, PASSPHRASE).identity


def _message(method: str, body: dict[str, Any], nonce: str = "") -> bytes:
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return canonicalize({"v": 1, "method": method, "nonce": nonce or stamp + "-n", "ts": stamp,
                         "body": body})


def _refused(stub: node_pb2_grpc.AgentNodeStub, envelope: bytes, binding: bytes = b"",
             method: str = "Query") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, method)(node_pb2.SealedRequest(version=1, envelope=envelope,
                                                     key_binding=binding), timeout=10)
    return caught.value


# --------------------------------------------------------------------------- the whole path


def test_node_info_carries_the_sm2_key_under_both_proofs(gm_node: NodeProcess) -> None:
    node_identity = _node_identity(gm_node)
    with NodeClient(gm_node.address, gm_node.ca_pem, Identity.generate("gm")) as client:
        info = client.node_info()
    assert info.profile == "gm"
    assert info.sm2_public_key == node_identity.sm2.public_key()
    assert info.document["sm2PublicKey"] == node_identity.sm2.public_key().to_hex()
    assert verify_document(info.document, require_sm2=True) == gm_node.did


def test_gm_grant_query_answer_and_access_log(
    gm_node: NodeProcess, requester: Identity, granted: list[str],
    bank_rows: list[dict[str, Any]]
) -> None:
    rows = [r for r in bank_rows if int(r["customer_id"][1:]) < GM_WALLETS]
    with NodeClient(gm_node.address, gm_node.ca_pem, requester) as client:
        first = Requester(requester).ask_with(client, COUNT)
        session, _ = client.gm_session()
        assert session.established  # the first reply confirmed the session
        again = Requester(requester).ask_with(client, COUNT)
        # Later requests of the session are SM4-GCM only (kind 2), with no key binding.
        envelope, _ = client.sealed_request("Query", {"query": COUNT})
        assert envelope[1] == PROFILE_GM and envelope[2] == KIND_REQUEST
    values = first.groups[0]["values"]
    assert values["count"] == len(rows)
    assert values["avg:age"] == pytest.approx(sum(r["age"] for r in rows) / len(rows))
    assert again.groups == first.groups
    # The answer is node-signed (Ed25519: no SM2 per query) and addressed to this requester.
    assert first.document["proof"]["cryptosuite"] == EDDSA_JCS
    assert verify_document(first.document) == gm_node.did

    with gm_node.client(gm_node.wallets[0]) as client:
        log = client.access_events()
    answered = [e for e in log.events if e["outcome"] == "answered"]
    assert len(answered) >= 2 and log.chain_intact and all(e["verified"] for e in log.events)
    assert {e["requester"] for e in answered} == {requester.did}
    assert answered[0]["own_grants"] and set(answered[0]["own_grants"]) <= set(granted)
    assert answered[0]["grant_count"] >= len(answered[0]["own_grants"])
    # The chain head the wallet checked is SM2 + Ed25519 signed by the gm node.
    assert verify_document(log.head, require_sm2=True) == gm_node.did


def test_sov_query_gm_profile(gm_node: NodeProcess, granted: list[str], tmp_path: Path) -> None:
    home = tmp_path / "requester"
    created = run_cli("sov-query", "init", "--home", str(home), "--profile", "gm").stdout
    assert "profile: gm" in created
    did = created.split()[-1]
    for wallet in gm_node.wallets:
        with gm_node.client(wallet) as client:
            client.submit_grant(issue_grant(
                wallet, requester=did, nodes=[gm_node.did], purpose=PURPOSE,
                scopes=["transaction"], ttl=timedelta(hours=24)))
    ca = tmp_path / "ca.pem"
    ca.write_bytes(gm_node.ca_pem)
    out = run_cli("sov-query", "ask", "--home", str(home), "--node", gm_node.address, "--ca",
                  str(ca), "--dataset", "contacts", "--measure", "count", "--purpose", PURPOSE,
                  "--json")
    answer = json.loads(out.stdout)
    assert answer["requester"] == did and answer["node"] == gm_node.did
    assert answer["groups"][0]["values"]["count"] == 6 * GM_WALLETS


# --------------------------------------------------------------------------- refused sessions


def test_tampered_opening_is_refused(gm_node: NodeProcess, stub: Any) -> None:
    caller = Identity.generate("gm")
    node_key = _node_identity(gm_node).sm2.public_key()
    session = GMSession.open_to(gm_node.did, node_key, caller)
    envelope = bytearray(session.seal(_message("Query", {"query": COUNT})))
    envelope[34] ^= 0x01  # the low byte of "created": one second off, signature broken
    binding = canonicalize(issue_key_binding(caller))
    error = _refused(stub, bytes(envelope), binding)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not signed by the sender's SM2 key" in error.details()


def test_opening_to_a_wrong_sm2_key_is_refused(gm_node: NodeProcess, stub: Any) -> None:
    caller = Identity.generate("gm")
    wrong = SM2PrivateKey.generate().public_key()
    envelope = GMSession.open_to(gm_node.did, wrong, caller).seal(_message("Query", {}))
    error = _refused(stub, envelope, canonicalize(issue_key_binding(caller)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "sealed to another key" in error.details()


def test_forged_or_missing_key_binding_is_refused(gm_node: NodeProcess, stub: Any) -> None:
    caller, impostor = Identity.generate("gm"), Identity.generate("gm")
    node_key = _node_identity(gm_node).sm2.public_key()
    # The impostor vouches for its own SM2 key under the caller's DID: the Ed25519 proof fails.
    forged = {**issue_key_binding(impostor), "did": caller.did}
    opening = GMSession.open_to(gm_node.did, node_key, caller).seal(_message("Query", {}))
    cases = {
        b"": "needs an SM2KeyBinding",
        canonicalize(forged): "signature is invalid",
        canonicalize(issue_key_binding(impostor)): "another DID than the sender",
        b"{not json": "not JSON",
        canonicalize(issue_key_binding(caller, now=datetime.now(UTC) - timedelta(hours=1))):
            "too old",
    }
    for binding, reason in cases.items():
        error = _refused(stub, opening, binding)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, reason
        assert "SM2 public key" in error.details() and reason in error.details()
    # An impostor who signs the opening with its own SM2 key but binds the caller's key fails.
    spoof = GMSession.open_to(gm_node.did, node_key,
                              Identity(caller.signing_key, "gm", impostor.sm2))
    error = _refused(stub, spoof.seal(_message("Query", {})),
                     canonicalize(issue_key_binding(caller)))
    assert "not signed by the sender's SM2 key" in error.details()


def test_unknown_session_is_refused(gm_node: NodeProcess, stub: Any) -> None:
    """A kind-2 envelope of a session this node never accepted: re-establish, nothing done."""
    caller, node_identity = Identity.generate("gm"), _node_identity(gm_node)
    session = GMSession.open_to(gm_node.did, node_identity.sm2.public_key(), caller)
    # Establish the session against a cache of our own holding the node's key, not the node.
    elsewhere = GMSessionCache()
    opened = elsewhere.open(session.seal(b"hello"), node_identity,
                            lambda did: caller.sm2.public_key())
    session.open_reply(elsewhere.seal_reply(opened.session_id, b"ok"))
    envelope = session.seal(_message("Query", {"query": COUNT}))
    assert envelope[2] == KIND_REQUEST
    error = _refused(stub, envelope)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown or expired gm session" in error.details()


def test_replayed_gm_envelope_is_refused(gm_node: NodeProcess, requester: Identity,
                                         granted: list[str]) -> None:
    with NodeClient(gm_node.address, gm_node.ca_pem, requester) as client:
        envelope, nonce = client.sealed_request("Query", {"query": COUNT})
        assert envelope[2] == KIND_OPEN
        client.send("Query", envelope, nonce)
        with pytest.raises(NodeError) as caught:
            client.send("Query", envelope, nonce)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "replayed" in str(caught.value)


# --------------------------------------------------------------------------- profile policy


def test_intl_envelope_to_gm_node_is_failed_precondition(gm_node: NodeProcess,
                                                         stub: Any) -> None:
    caller = Identity.generate()
    envelope = seal(_message("Query", {"query": COUNT}), caller, gm_node.did)
    error = _refused(stub, envelope)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "uses the gm crypto profile" in error.details()
    assert "use the node's profile, see GetNodeInfo" in error.details()
    # The client says so before sending anything when its identity has no SM2 key.
    with NodeClient(gm_node.address, gm_node.ca_pem, caller) as client, \
            pytest.raises(NodeError, match="needs a gm identity") as caught:
        client.query(COUNT)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_gm_envelope_to_intl_node_is_failed_precondition(
    tmp_path: Path, bank_rows: list[dict[str, Any]]
) -> None:
    home = _home(tmp_path, bank_rows[:12], "intl")
    node = serve(home)
    try:
        caller = Identity.generate("gm")
        envelope = GMSession.open_to(node.did, SM2PrivateKey.generate().public_key(),
                                     caller).seal(_message("Query", {"query": COUNT}))
        channel = secure_channel(node.address, node.ca_pem)
        try:
            error = _refused(node_pb2_grpc.AgentNodeStub(channel), envelope,
                             canonicalize(issue_key_binding(caller)))
        finally:
            channel.close()
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "uses the intl crypto profile and refuses gm envelopes" in error.details()
        # A gm identity still talks to an intl node in the node's profile (NaCl box).
        with NodeClient(node.address, node.ca_pem, caller) as client:
            assert client.node_info().sm2_public_key is None
            assert client.grant_status() == []
    finally:
        stop(node)


def test_gm_node_requires_sm2_proofs_on_grants_and_revocations(
    gm_node: NodeProcess, requester: Identity, granted: list[str]
) -> None:
    wallet = gm_node.wallets[1]
    ed25519_only = Identity(wallet.signing_key)  # the same DID without its SM2 key
    grant = _grant(gm_node, ed25519_only, requester)
    with gm_node.client(wallet) as client:
        before = len(client.grant_status())
        with pytest.raises(NodeError) as caught:
            client.submit_grant(grant)
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "requires the grant to carry an SM2 proof" in str(caught.value)
        assert len(client.grant_status()) == before  # nothing was stored

        revocation = issue_revocation(ed25519_only, granted[1], reason="test")
        with pytest.raises(NodeError) as caught:
            client.revoke(revocation)
        assert "requires the revocation to carry an SM2 proof" in str(caught.value)
        status = {g.grant_id: g.status for g in client.grant_status([granted[1]])}
        assert status[granted[1]] == "active"


def test_gm_sessions_with_several_worker_processes(
    gm_node: NodeProcess, requester: Identity, granted: list[str]
) -> None:
    """``sov-node serve --workers 2``: sessions live in one worker's memory, and a client's
    channel stays on one worker, so every client opens once and then queries symmetrically
    (a reconnect to another worker would cost one retried opening, see NodeClient.call)."""
    port_file = gm_node.home / "port-workers"
    process = subprocess.Popen(
        [str(BIN / "sov-node"), "serve", "--home", str(gm_node.home), "--listen", "127.0.0.1:0",
         "--port-file", str(port_file), "--workers", "2"], env=env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text()}"
        clients = [NodeClient(address, gm_node.ca_pem, requester) for _ in range(6)]
        try:
            counts = {Requester(requester).ask_with(c, COUNT).groups[0]["values"]["count"]
                      for c in clients for _ in range(3)}
            assert all(c.gm_session()[0].established for c in clients)
        finally:
            for client in clients:
                client.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert counts == {6 * GM_WALLETS}
