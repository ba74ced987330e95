"""A real coordinator process and three real node processes (SQLite, CSV, PostgreSQL sources):
registration, the operator's listing, health, reflection, metrics, mutual TLS toward nodes,
routing and fan-out of sealed envelopes, and every bad input of the issue as a test."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent_node.client import NodeError
from agent_node.home import load_home
from agent_node.network import NodeProtocolError, _routed
from agent_node.requester import RegionRefused, ask_network, ask_network_report
from agent_node.vault import Vault
from consent.canonical import canonicalize
from consent.grants import issue_grant, issue_revocation
from consent.identity import Identity
from consent.keystore import save_identity
from consent.registration import issue_registration
from ledger.authority import check_entry
from ledger.client import LedgerClient
from ledger.home import open_authors, open_log
from protos.sovereign.v1 import coordinator_pb2 as pb
from protos.sovereign.v1 import coordinator_pb2_grpc as pb_grpc
from protos.sovereign.v1 import node_pb2, node_pb2_grpc
from protos.transport import secure_channel
from tests.agent_node.conftest import PASSPHRASE, run_cli, serve, stop
from tests.coordinator.conftest import Network, coord_cli, serve_coordinator, stop_process

QUERY = {"dataset": "contacts", "purpose": "marketing-analytics",
         "measures": ["count", "sum:duration"], "group_by": ["job"]}
K = 5


def expected(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["job"]].append(row)
    return {job: {"count": len(g), "sum:duration": sum(r["duration"] for r in g)}
            for job, g in groups.items() if len({r["customer_id"] for r in g}) >= K}


def stub(network: Network) -> pb_grpc.CoordinatorStub:
    return pb_grpc.CoordinatorStub(secure_channel(network.coordinator.address,
                                                  network.coordinator.ca_pem))


def wait_for_health(network: Network, did: str, health: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    with network.coordinator.client() as client:
        while time.monotonic() < deadline:
            if any(n.did == did and n.health == health for n in client.nodes(fresh=True)):
                return
            time.sleep(0.1)
    raise AssertionError(f"node never became {health}")


def test_nodes_listing_shows_every_node_with_health_and_offer(network: Network) -> None:
    for node in network.nodes:
        wait_for_health(network, node.did, "serving")
    listed = json.loads(coord_cli("nodes", "--home", str(network.coordinator.home),
                                  "--json").stdout)
    by_name = {n["name"]: n for n in listed}
    assert set(by_name) == {"node-sqlite", "node-csv", "node-postgresql"}
    for node in network.nodes:
        entry = by_name[node.name]
        assert entry["did"] == node.did
        assert entry["region"] == node.region
        assert entry["endpoint"] == f"127.0.0.1:{node.coordinator_port}"
        assert entry["datasets"] == {"contacts": ["identity", "sentiment", "transaction"]}
        assert entry["health"] == "serving" and entry["last_contact"]
    only_ap = json.loads(coord_cli("nodes", "--home", str(network.coordinator.home), "--json",
                                   "--region", "ap-east").stdout)
    assert [n["name"] for n in only_ap] == ["node-postgresql"]
    text = coord_cli("nodes", "--home", str(network.coordinator.home)).stdout
    assert "node-csv  serving  region eu-central" in text
    status = json.loads(coord_cli("status", "--home", str(network.coordinator.home),
                                  "--json").stdout)
    assert status["serving"] is True and status["registry"] == "sqlite"
    assert status["nodes"] == 3 and status["health"] == {"serving": 3}
    assert status["max_fanout"] == 4


def test_health_reflection_and_metrics(network: Network) -> None:
    channel = secure_channel(network.coordinator.address, network.coordinator.ca_pem)
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="sovereign.v1.Coordinator"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    services = next(iter(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)))
    names = {s.name for s in services.list_services_response.service}
    assert "sovereign.v1.Coordinator" in names
    channel.close()
    config = (network.coordinator.home / "coordinator.toml").read_text()
    port = int(config.split("metrics_port = ")[1].split("\n")[0])
    with network.coordinator.client() as client:
        client.status()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'sov_coordinator_requests_total{code="OK",method="Status"}' in body


def test_node_port_for_the_coordinator_requires_its_client_certificate(
        network: Network) -> None:
    node = network.nodes[0]
    address = f"127.0.0.1:{node.coordinator_port}"
    anonymous = secure_channel(address, node.node.ca_pem)
    with pytest.raises(grpc.RpcError) as refused:
        node_pb2_grpc.AgentNodeStub(anonymous).GetNodeInfo(node_pb2.NodeInfoRequest(version=1),
                                                           timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    home = network.coordinator.home / "tls"
    admitted = secure_channel(address, node.node.ca_pem, client_cert=(
        (home / "server.key").read_bytes(), (home / "server.pem").read_bytes()))
    info = node_pb2_grpc.AgentNodeStub(admitted).GetNodeInfo(
        node_pb2.NodeInfoRequest(version=1), timeout=5)
    assert json.loads(info.document)["did"] == node.did
    anonymous.close()
    admitted.close()


def test_fan_out_through_the_coordinator_gives_the_direct_answers(network: Network) -> None:
    with network.coordinator.client() as coordinator:
        listed = coordinator.nodes(dataset="contacts")
        assert {n.did for n in listed} == {n.did for n in network.nodes}
        calls = [(coordinator.client_for(n, network.requester), {"query": QUERY})
                 for n in listed]
        routed = coordinator.fan_out("Query", calls, deadline_ms=10_000)
    assert [r.outcome for r in routed] == ["answered"] * 3, [r.message for r in routed]
    for result in routed:
        node = next(n for n in network.nodes if n.did == result.node_did)
        assert result.document is not None
        answer = result.document["body"]["answer"]
        assert answer["node"] == node.did and answer["requester"] == network.requester.did
        got = {g["key"][0]: g["values"] for g in answer["groups"]}
        assert got == expected(node.rows)
        # The same question straight to the node: the same verified aggregates.
        with node.node.client(network.requester) as direct:
            direct_answer = direct.query(QUERY)["body"]["answer"]
        assert direct_answer["groups"] == answer["groups"]


def combined_expectation(network: Network) -> dict[str, dict[str, Any]]:
    """Per job: the nodes that release it (>= k customers there) and the sums over them."""
    out: dict[str, dict[str, Any]] = {}
    for node in network.nodes:
        for job, values in expected(node.rows).items():
            rows = [r for r in node.rows if r["job"] == job]
            entry = out.setdefault(job, {"nodes": [], "count": 0, "sum:duration": 0})
            entry["nodes"].append(node.did)
            entry["count"] += values["count"]
            entry["sum:duration"] += values["sum:duration"]
            entry["ages"] = entry.get("ages", 0) + sum(r["age"] for r in rows)
    return out


def test_the_requester_combines_the_nodes_answers(network: Network, tmp_path: Path) -> None:
    query = {**QUERY, "measures": ["count", "sum:duration", "avg:age"]}
    with network.coordinator.client() as coordinator:
        result = ask_network(network.requester, coordinator, query, deadline_ms=10_000)
    combined = result.combined
    assert sorted(combined["answered"]) == sorted(n.did for n in network.nodes)
    want = combined_expectation(network)
    got = {g["key"][0]: g for g in combined["groups"]}
    assert set(got) == set(want)
    for job, group in got.items():
        assert sorted(group["nodes"]) == sorted(want[job]["nodes"])
        assert sorted(group["withheld_at"]) == sorted(
            n.did for n in network.nodes if n.did not in want[job]["nodes"])
        assert group["values"]["count"] == want[job]["count"]
        assert group["values"]["sum:duration"] == want[job]["sum:duration"]
        # The mean from the nodes' sums and counts, never an average of averages.
        assert group["values"]["avg:age"] == pytest.approx(want[job]["ages"] / want[job]["count"])
    assert any(g["withheld_at"] for g in got.values())  # the data makes some groups partial
    assert any("withheld at a node" in note for note in combined["notes"])

    # sov-query ask-network prints the same combination (--json) and says what is withheld.
    save_identity(tmp_path / "requester.key", network.requester, PASSPHRASE)
    args = ["sov-query", "ask-network", "--home", str(tmp_path), "--coordinator",
            network.coordinator.address, "--ca", str(network.coordinator.home / "tls/ca.pem"),
            "--dataset", "contacts", "--purpose", "marketing-analytics", "--measure", "count",
            "--measure", "sum:duration", "--group-by", "job"]
    printed = json.loads(run_cli(*args, "--json").stdout)
    assert {g["key"][0]: g["values"]["count"] for g in printed["groups"]} == {
        job: w["count"] for job, w in want.items()}
    table = run_cli(*args).stdout
    assert "withheld at" in table and "node-csv (eu-central): answered" in table


def test_several_questions_reach_each_node_as_one_report(network: Network,
                                                        tmp_path: Path) -> None:
    """Issue 15: one sealed envelope per node carries every question; each question's
    combination equals the one asked alone, and a question a node refuses is missing from
    that question only."""
    by_job = {**QUERY, "measures": ["count", "sum:duration"]}
    overall = {**QUERY, "measures": ["count"], "group_by": []}
    refused = {**QUERY, "measures": ["count"], "group_by": ["education"]}  # identity scope
    with network.coordinator.client() as coordinator:
        alone = ask_network(network.requester, coordinator, by_job, deadline_ms=10_000)
        first, second, third = ask_network_report(
            network.requester, coordinator, [by_job, overall, refused], deadline_ms=10_000)
    assert first.combined["groups"] == alone.combined["groups"]  # threshold mode: exact
    assert sorted(first.combined["answered"]) == sorted(n.did for n in network.nodes)
    [total] = second.combined["groups"]  # every consenting row, released groups or not
    assert total["values"]["count"] >= sum(g["values"]["count"] for g in alone.combined["groups"])
    assert [a.outcome for a in third.answers] == ["refused"] * len(network.nodes)
    assert third.combined["groups"] == [] and all("identity" in a.message
                                                 for a in third.answers)
    # Each node answered all three from one signed reply document.
    assert all(a.document is b.document for a, b in zip(first.answers, second.answers,
                                                       strict=True))

    save_identity(tmp_path / "requester.key", network.requester, PASSPHRASE)
    printed = json.loads(run_cli(
        "sov-query", "ask-network", "--home", str(tmp_path), "--coordinator",
        network.coordinator.address, "--ca", str(network.coordinator.home / "tls/ca.pem"),
        "--dataset", "contacts", "--purpose", "marketing-analytics", "--group-by", "job",
        "--measure", "count", "--measures", "count,sum:duration", "--json").stdout)
    assert [p["measures"] for p in printed] == [["count"], ["count", "sum:duration"]]
    assert printed[1]["groups"] == alone.combined["groups"]


def test_the_readme_python_example_runs(network: Network, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The requester's guide's Python block, run as written with the example's names
    replaced by this network's (address, CA, key file, dataset and columns)."""
    from tests.coordinator.test_docs import FENCE, guide_text

    (code,) = [body for kind, body in FENCE.findall(guide_text()) if kind == "python"]
    save_identity(tmp_path / "requester.key", network.requester, PASSPHRASE)
    for example, real in (
            ("coord.example:7600", network.coordinator.address),
            ("coordinator-ca.pem", str(network.coordinator.home / "tls" / "ca.pem")),
            ('"requester.key"', repr(str(tmp_path / "requester.key"))),
            ('"orders"', '"contacts"'), ('"quote-generation"', '"marketing-analytics"'),
            ("amount", "duration"), ('"contract"', '"job"')):
        assert example in code
        code = code.replace(example, real)
    exec(compile(code, "README.md", "exec"), {  # the documented example, as written
        "passphrase": PASSPHRASE, "node_dids": [n.did for n in network.nodes]})
    printed = capsys.readouterr().out
    # EU regions only: two nodes asked, the ap-east node left out; groups printed.
    assert "['admin.']" in printed and "{'count':" in printed


def test_regions_are_enforced_by_the_requester_and_by_the_node(network: Network) -> None:
    far = network.by_kind("postgresql")  # ap-east
    eu = ["eu-west", "eu-central"]
    with network.coordinator.client() as coordinator:
        result = ask_network(network.requester, coordinator, QUERY, regions=eu)
        assert sorted(result.combined["answered"]) == sorted(
            n.did for n in network.nodes if n.region in eu)
        with pytest.raises(RegionRefused) as refused:
            ask_network(network.requester, coordinator, QUERY, nodes=[far.did], regions=eu)
    assert "outside the allowed regions" in str(refused.value)
    # A router that sends the question elsewhere anyway: the node refuses it itself.
    with far.node.client(network.requester) as direct, pytest.raises(NodeError) as node_refused:
        direct.query({**QUERY, "regions": eu})
    assert node_refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "outside the regions the query allows" in str(node_refused.value)


def test_registration_with_a_forged_signature_is_refused(network: Network) -> None:
    node = network.nodes[0]
    impostor = Identity.generate()
    statement = issue_registration(impostor, name="node-sqlite", endpoint="127.0.0.1:1",
                                   region="eu-west", residency="x", datasets={},
                                   tls_ca_pem=node.node.ca_pem)
    forged = {**statement, "did": node.did}  # claims the real node's DID
    with pytest.raises(grpc.RpcError) as refused:
        stub(network).Register(pb.RegisterRequest(version=1, registration=canonicalize(forged)),
                               timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "signature is invalid" in refused.value.details()
    assert len(network.coordinator.client().nodes()) == 3


def test_an_endpoint_speaking_as_another_did_is_refused(network: Network) -> None:
    node = network.nodes[1]
    other = Identity.generate()
    statement = issue_registration(other, name="node-elsewhere",
                                   endpoint=f"127.0.0.1:{node.coordinator_port}",
                                   region="eu-west", residency="x", datasets={},
                                   tls_ca_pem=node.node.ca_pem)
    with pytest.raises(grpc.RpcError) as refused:
        stub(network).Register(pb.RegisterRequest(version=1,
                                                  registration=canonicalize(statement)),
                               timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"is {node.did}, not the registering DID" in refused.value.details()
    assert "node-elsewhere" not in coord_cli("nodes", "--home",
                                             str(network.coordinator.home)).stdout


def test_a_replayed_older_registration_is_refused(network: Network) -> None:
    node = network.nodes[0]
    with network.coordinator.client() as client:
        current = next(n for n in client.nodes() if n.did == node.did).registration
    with pytest.raises(grpc.RpcError) as refused:
        stub(network).Register(pb.RegisterRequest(
            version=1, registration=canonicalize(current.document)), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "an older or replayed one is refused" in refused.value.details()


def test_unknown_node_and_fan_out_limit_forward_nothing(network: Network) -> None:
    node = network.nodes[0]
    with node.node.client(network.requester) as client:
        envelope, _ = client.sealed_request("Query", {"query": QUERY})
    unknown = pb.RouteTarget(node_did=Identity.generate().did, envelope=envelope)
    known = pb.RouteTarget(node_did=node.did, envelope=envelope)
    with pytest.raises(grpc.RpcError) as refused:
        stub(network).Route(pb.RouteRequest(version=1, method="Query",
                                            targets=[known, unknown]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nothing was forwarded" in refused.value.details()
    many = [pb.RouteTarget(node_did=Identity.generate().did, envelope=b"x") for _ in range(5)]
    with pytest.raises(grpc.RpcError) as refused:
        stub(network).Route(pb.RouteRequest(version=1, method="Query", targets=many),
                            timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "fan-out limit of 4" in refused.value.details()
    # The envelope refused with the call was never delivered: it is still good at the node.
    result = stub(network).Route(pb.RouteRequest(version=1, method="Query", targets=[known]),
                                 timeout=10).results[0]
    assert result.outcome == "answered"


def test_replayed_and_altered_envelopes_are_refused_by_the_node(network: Network) -> None:
    node = network.nodes[2]
    with node.node.client(network.requester) as client:
        envelope, _ = client.sealed_request("Query", {"query": QUERY})
    target = pb.RouteTarget(node_did=node.did, envelope=envelope)
    first = stub(network).Route(pb.RouteRequest(version=1, method="Query", targets=[target]),
                                timeout=10).results[0]
    assert first.outcome == "answered"
    again = stub(network).Route(pb.RouteRequest(version=1, method="Query", targets=[target]),
                                timeout=10).results[0]
    assert (again.outcome, again.code) == ("refused", "UNAUTHENTICATED")
    assert "nonce" in again.message or "replay" in again.message
    altered = bytearray(envelope)
    altered[-5] ^= 1
    bad = stub(network).Route(pb.RouteRequest(version=1, method="Query", targets=[
        pb.RouteTarget(node_did=node.did, envelope=bytes(altered))]), timeout=10).results[0]
    assert (bad.outcome, bad.code) == ("refused", "UNAUTHENTICATED")
    assert "cannot be opened" in bad.message


def test_an_answer_altered_on_the_way_is_dropped_and_the_others_kept(network: Network) -> None:
    with network.coordinator.client() as coordinator:
        clients = [coordinator.client_for(n, network.requester)
                   for n in coordinator.nodes(dataset="contacts")]
        sealed = [(c, *c.sealed_request("Query", {"query": QUERY})) for c in clients]
        results = coordinator.route_raw("Query", [(c.node.did, e, b"") for c, e, _ in sealed])
        # A coordinator (or network) that alters one node's sealed answer:
        tampered = bytearray(results[0].envelope)
        tampered[-3] ^= 1
        results[0].envelope = bytes(tampered)
        routed = [_routed(c, "Query", e, n, r)
                  for (c, e, n), r in zip(sealed, results, strict=True)]
    assert routed[0].outcome == "bad-signature" and routed[0].document is None
    assert [r.outcome for r in routed[1:]] == ["answered", "answered"]


def test_a_routed_call_to_one_node_raises_the_nodes_refusal(network: Network) -> None:
    node = network.nodes[0]
    with network.coordinator.client() as coordinator:
        listed = next(n for n in coordinator.nodes() if n.did == node.did)
        client = coordinator.client_for(listed, Identity.generate())  # holds no grant
        with pytest.raises(NodeError) as refused:
            client.query(QUERY)
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert not isinstance(refused.value, NodeProtocolError)


def test_a_revocation_relay_reaches_every_node_across_restarts(network: Network) -> None:
    holder, away = network.by_kind("sqlite"), network.by_kind("csv")
    wallet = holder.node.wallets[0]
    # The same customer is known at the second node too (bound there to the same wallet).
    node_home = load_home(away.node.home, PASSPHRASE)
    Vault(node_home.vault_path, node_home.keys).bind(["C000"], wallet.did)
    credential = issue_grant(wallet, requester=network.requester.did,
                             nodes=[holder.did, away.did], purpose="marketing-analytics",
                             scopes=["transaction"], ttl=timedelta(hours=24))
    for node in (holder, away):
        with node.node.client(wallet) as client:
            grant_id = client.submit_grant(credential).grant_id
    stop(away.node)  # one node holding the grant is down when the wallet revokes
    revocation = issue_revocation(wallet, grant_id)
    with network.coordinator.client() as coordinator:
        listed = {n.did: n for n in coordinator.nodes()}
        clients = [coordinator.client_for(listed[n.did], wallet) for n in (holder, away)]
        relay_id, results = coordinator.relay_revocation(clients, revocation)
    assert relay_id.startswith("urn:uuid:")
    assert [(r.node_did, r.state) for r in results] == [(holder.did, "delivered"),
                                                        (away.did, "pending")]
    assert results[0].receipt is not None  # the node's signed receipt, verified
    assert results[0].receipt["body"]["grant_id"] == grant_id
    assert results[1].message  # why it is not there yet
    with holder.node.client(wallet) as client:
        assert client.grant_status([grant_id])[0].status == "revoked"
    home = str(network.coordinator.home)
    status = json.loads(coord_cli("status", "--home", home, "--json").stdout)
    assert status["pending_relay_nodes"] == [away.did]
    # The hosted ledger records the relay, signed by the coordinator under the ledger's rules:
    # which nodes took it, and digests of the sealed envelopes (never the grant or customer).
    with open_log(network.coordinator.home / "ledger", PASSPHRASE) as ledger_log:
        relays = [(entry, json.loads(entry)) for _, entry in ledger_log.entries()]
    entry, record = next((e, r) for e, r in relays if r.get("relay_id") == relay_id)
    assert record["type"] == "relay"
    assert (record["delivered"], record["pending"]) == ([holder.did], [away.did])
    assert grant_id not in entry.decode() and wallet.did not in entry.decode()
    with open_authors(network.coordinator.home / "ledger") as authors:
        assert check_entry(record, entry, authors.current()).author == status_did(network)

    # The coordinator restarts, then the node comes back: the kept relay reaches it.
    stop_process(network.coordinator.process)
    network.coordinator = serve_coordinator(network.coordinator.home)
    restarted = serve(away.node.home)
    restarted.wallets = away.node.wallets
    away.node = restarted
    deadline = time.monotonic() + 20
    while json.loads(coord_cli("status", "--home", home, "--json").stdout)["pending_relays"]:
        assert time.monotonic() < deadline, "the relay never reached the restarted node"
        time.sleep(0.3)
    with away.node.client(wallet) as client:
        assert client.grant_status([grant_id])[0].status == "revoked"


def status_did(network: Network) -> str:
    with network.coordinator.client() as client:
        return str(client.status()["did"])


def test_nodes_anchor_their_heads_in_the_hosted_ledger(network: Network) -> None:
    node = network.by_kind("sqlite")
    pushed = run_cli("sov-node", "log", "push", "--home", str(node.node.home))
    assert "anchored" in pushed.stdout or "already in the ledger" in pushed.stdout
    with LedgerClient(network.coordinator.address, network.coordinator.ca_pem) as ledger:
        head = ledger.latest_tree_head()
    with open_log(network.coordinator.home / "ledger", PASSPHRASE) as ledger_log:
        kinds = [json.loads(e)["type"] for _, e in ledger_log.entries()]
        assert head.size == ledger_log.size
    assert "access_head" in kinds


def test_a_relayed_revocation_is_accepted_again_a_direct_replay_is_not(
        network: Network) -> None:
    node = network.by_kind("postgresql")
    wallet = node.node.wallets[1]
    with node.node.client(wallet) as client:
        grant_id = client.submit_grant(issue_grant(
            wallet, requester=network.requester.did, nodes=[node.did],
            purpose="marketing-analytics", scopes=["transaction"],
            ttl=timedelta(hours=24))).grant_id
        envelope, _ = client.sealed_request("Revoke", {"revocation": issue_revocation(
            wallet, grant_id)})
    channel = secure_channel(node.node.address, node.node.ca_pem)
    agent = node_pb2_grpc.AgentNodeStub(channel)
    request = node_pb2.SealedRequest(version=1, envelope=envelope)
    agent.RelayRevoke(request, timeout=10)
    agent.RelayRevoke(request, timeout=10)  # a retry of the same envelope: harmless, accepted
    agent.Revoke(request, timeout=10)
    with pytest.raises(grpc.RpcError) as replayed:  # the ordinary path keeps its replay guard
        agent.Revoke(request, timeout=10)
    assert replayed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel.close()


def test_gm_envelopes_inside_a_session_are_not_relayed(network: Network) -> None:
    # A gm envelope must open a session of its own (kind 1) with its key binding: one sealed
    # in a live session (kind 2), or an opening without the binding, is refused (the gm relay
    # itself: tests/coordinator/test_relay_gm.py).
    node = network.nodes[0]
    for envelope, binding in ((b"\x01\x02\x02" + bytes(60), b"{}"),
                              (b"\x01\x02\x01" + bytes(60), b"")):
        target = pb.RouteTarget(node_did=node.did, envelope=envelope, key_binding=binding)
        with pytest.raises(grpc.RpcError) as refused:
            stub(network).RelayRevocation(pb.RelayRevocationRequest(version=1,
                                                                    targets=[target]),
                                          timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "must open a session of its own" in refused.value.details()
    status = json.loads(coord_cli("status", "--home", str(network.coordinator.home),
                                  "--json").stdout)
    assert status["pending_relays"] == 0  # nothing kept


def test_a_slow_node_costs_its_deadline_and_a_dead_one_is_reported(network: Network) -> None:
    slow, dead, fine = network.nodes
    os.kill(slow.node.process.pid, signal.SIGSTOP)
    try:
        with network.coordinator.client() as coordinator:
            listed = coordinator.nodes(dataset="contacts")
            calls = [(coordinator.client_for(n, network.requester), {"query": QUERY})
                     for n in listed]
            started = time.monotonic()
            routed = {r.node_did: r for r in coordinator.fan_out("Query", calls,
                                                                 deadline_ms=1500)}
            elapsed = time.monotonic() - started
    finally:
        os.kill(slow.node.process.pid, signal.SIGCONT)
    assert routed[slow.did].outcome == "deadline"
    assert routed[fine.did].outcome == routed[dead.did].outcome == "answered"
    assert elapsed < 4.0  # the deadline (1.5 s) plus sealing and verification, not more

    dead.node.process.terminate()
    dead.node.process.wait(timeout=10)
    try:
        with network.coordinator.client() as coordinator:
            listed = coordinator.nodes(dataset="contacts")
            calls = [(coordinator.client_for(n, network.requester), {"query": QUERY})
                     for n in listed]
            routed = {r.node_did: r for r in coordinator.fan_out("Query", calls,
                                                                 deadline_ms=3000)}
            assert routed[dead.did].outcome in ("unreachable", "offline")
            assert routed[fine.did].outcome == routed[slow.did].outcome == "answered"
            wait_for_health(network, dead.did, "unreachable")
            calls = [(coordinator.client_for(n, network.requester), {"query": QUERY})
                     for n in listed]
            again = {r.node_did: r for r in coordinator.fan_out("Query", calls)}
        assert again[dead.did].outcome == "offline"
        assert "failed its last health check" in again[dead.did].message
    finally:
        # Back on the same coordinator port: the coordinator finds it serving again.
        restarted = serve(dead.node.home)
        restarted.wallets = dead.node.wallets
        dead.node = restarted
    wait_for_health(network, dead.did, "serving")
