"""Every bad input of issue 3 gets a specific gRPC status and message and changes nothing;
plus the differencing attack that k-suppression, overlap control and DP must stop."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from agent_node.client import NodeError
from agent_node.requester import Requester
from consent.grants import issue_grant, issue_revocation
from consent.identity import Identity
from protos.sovereign.v1 import node_pb2, node_pb2_grpc
from protos.transport import secure_channel
from tests.agent_node.conftest import NodeProcess, grant_all, run_cli

PURPOSE = "marketing-analytics"


def _grant(node: NodeProcess, wallet: Identity, requester: Identity, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"purpose": PURPOSE, "scopes": ["transaction"],
                            "ttl": timedelta(hours=1)}
    args.update(kw)
    return issue_grant(wallet, requester=requester.did, nodes=kw.pop("nodes", [node.did]),
                       **{k: v for k, v in args.items() if k != "nodes"})


def _submit_refused(node: NodeProcess, credential: Any, code: grpc.StatusCode) -> str:
    with node.client(node.wallets[0]) as client:
        before = client.grant_status()
        with pytest.raises(NodeError) as info:
            client.submit_grant(credential)
        assert client.grant_status() == before  # nothing stored
    assert info.value.code == code
    return str(info.value)


def _ask(node: NodeProcess, requester: Identity, **query: Any) -> Any:
    body = {"dataset": "contacts", "purpose": PURPOSE, "measures": ["count"], **query}
    return Requester(requester).ask(node.address, node.ca_pem, body)


def _refused(node: NodeProcess, requester: Identity, code: grpc.StatusCode, **query: Any) -> str:
    body = {"dataset": "contacts", "purpose": PURPOSE, "measures": ["count"], **query}
    # Straight to the node, past the requester library's own local checks.
    with node.client(requester) as client, pytest.raises(NodeError) as info:
        client.query(body)
    assert info.value.code == code, str(info.value)
    return str(info.value)


def test_unsigned_forged_expired_future_and_overlong_grants(sqlite_node: NodeProcess) -> None:
    node, requester = sqlite_node, Identity.generate()
    good = _grant(node, node.wallets[0], requester)
    unsigned = {k: v for k, v in good.items() if k != "proof"}
    assert "signed" in _submit_refused(node, unsigned, grpc.StatusCode.UNAUTHENTICATED)
    forged = copy.deepcopy(good)
    forged["credentialSubject"]["scopes"] = ["identity", "transaction"]
    _submit_refused(node, forged, grpc.StatusCode.UNAUTHENTICATED)
    past = datetime.now(UTC) - timedelta(hours=5)
    expired = _grant(node, node.wallets[0], requester, now=past)
    assert "expired" in _submit_refused(node, expired, grpc.StatusCode.FAILED_PRECONDITION)
    future = _grant(node, node.wallets[0], requester,
                    not_before=datetime.now(UTC) + timedelta(hours=2))
    _submit_refused(node, future, grpc.StatusCode.FAILED_PRECONDITION)
    other_node = _grant(node, node.wallets[0], requester, nodes=[Identity.generate().did])
    assert "this node" in _submit_refused(node, other_node, grpc.StatusCode.PERMISSION_DENIED)
    overlong = copy.deepcopy(good)
    overlong["validUntil"] = "2999-01-01T00:00:00Z"
    _submit_refused(node, overlong, grpc.StatusCode.UNAUTHENTICATED)  # proof no longer matches


def test_wrong_requester_purpose_scope_and_revoked(sqlite_node: NodeProcess) -> None:
    node, requester, intruder = sqlite_node, Identity.generate(), Identity.generate()
    ids = grant_all(node, requester, node.wallets[:10])
    assert "another requester" in _refused(node, intruder, grpc.StatusCode.PERMISSION_DENIED,
                                           grant_ids=[ids[0]])
    _refused(node, intruder, grpc.StatusCode.PERMISSION_DENIED)  # no grant names it at all
    assert "purpose" in _refused(node, requester, grpc.StatusCode.PERMISSION_DENIED,
                                 purpose="fraud-prevention", grant_ids=[ids[0]])
    message = _refused(node, requester, grpc.StatusCode.PERMISSION_DENIED, grant_ids=[ids[0]],
                       group_by=["education"])
    assert "identity" in message
    assert "not in the data map" in _refused(node, requester, grpc.StatusCode.INVALID_ARGUMENT,
                                             measures=["sum:salary"])
    assert _ask(node, requester, grant_ids=ids).groups[0]["values"]["count"] > 0
    with node.client(node.wallets[0]) as client:
        used = client.grant_status([ids[0]])[0].queries_used
        client.revoke(issue_revocation(node.wallets[0], ids[0]))
        assert "revoked" in _refused(node, requester, grpc.StatusCode.PERMISSION_DENIED,
                                     grant_ids=ids)
        status = client.grant_status([ids[0]])[0]
    assert status.status == "revoked" and status.queries_used == used  # refusal debits nothing
    # Another subject cannot revoke somebody else's grant.
    with node.client(node.wallets[1]) as client, pytest.raises(NodeError) as info:
        client.revoke(issue_revocation(node.wallets[1], ids[2]))
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_injection_in_names_and_values(sqlite_node: NodeProcess) -> None:
    node, requester = sqlite_node, Identity.generate()
    grant_all(node, requester, node.wallets)
    _refused(node, requester, grpc.StatusCode.INVALID_ARGUMENT,
             group_by=['job"; DROP TABLE grants; --'])
    _refused(node, requester, grpc.StatusCode.INVALID_ARGUMENT, dataset="contacts; --")
    _refused(node, requester, grpc.StatusCode.INVALID_ARGUMENT,
             filters=[{"column": "job", "op": "= 1 OR 1=1 --", "value": "x"}])
    # A hostile value is only ever a parameter: it matches nothing and breaks nothing. The
    # dp count of no rows is noise of scale 6 (6 rows per customer, epsilon 1): above 100
    # with probability below 1e-7, far below the 300 rows an injection would count.
    answer = _ask(node, requester, filters=[
        {"column": "job", "op": "eq", "value": "x' OR '1'='1"}])
    assert answer.mode == "dp" and answer.groups[0]["values"]["count"] < 100
    assert _ask(node, requester).groups[0]["values"]["count"] > 100  # tables intact


def test_oversized_malformed_and_replayed_envelopes(sqlite_node: NodeProcess) -> None:
    node, requester = sqlite_node, Identity.generate()
    grant_all(node, requester, node.wallets[:10])
    channel = secure_channel(node.address, node.ca_pem)
    stub = node_pb2_grpc.AgentNodeStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Query(node_pb2.SealedRequest(version=1, envelope=b"x" * (5 * 1024 * 1024)))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as info:
        stub.Query(node_pb2.SealedRequest(version=1, envelope=b"not an envelope"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        stub.Query(node_pb2.SealedRequest(version=7, envelope=b""))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with node.client(requester) as client:
        query = {"dataset": "contacts", "purpose": PURPOSE, "measures": ["count"]}
        envelope, nonce = client.sealed_request("Query", {"query": query})
        first = client.send("Query", envelope, nonce)
        assert first["body"]["answer"]["groups"]
        with pytest.raises(NodeError) as replay:
            client.send("Query", envelope, nonce)
        assert replay.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "already received" in str(replay.value)
        # An envelope sealed for one method is refused on another.
        envelope, nonce = client.sealed_request("Query", {"query": query})
        with pytest.raises(NodeError) as wrong:
            client.send("Export", envelope, nonce)
        assert wrong.value.code == grpc.StatusCode.INVALID_ARGUMENT
        tampered, nonce = client.sealed_request("Query", {"query": query})
        tampered = tampered[:-1] + bytes([tampered[-1] ^ 1])
        with pytest.raises(NodeError) as bad:
            client.send("Query", tampered, nonce)
        assert bad.value.code == grpc.StatusCode.UNAUTHENTICATED
    channel.close()


def test_a_grant_dated_in_the_future_never_lasts_past_72_hours(sqlite_node: NodeProcess
                                                               ) -> None:
    """Issued a minute ahead (within the 5-minute skew) for the full 72 hours, the grant would
    last 72 h + 1 min from acceptance: refused, nothing stored; 71 h 58 min is accepted."""
    node, requester = sqlite_node, Identity.generate()
    ahead = datetime.now(UTC) + timedelta(minutes=1)
    message = _submit_refused(node, _grant(node, node.wallets[0], requester, now=ahead,
                                           ttl=timedelta(hours=72)),
                              grpc.StatusCode.INVALID_ARGUMENT)
    assert "more than 72 hours from now" in message
    shorter = _grant(node, node.wallets[0], requester, now=ahead,
                     ttl=timedelta(hours=71, minutes=58))
    with node.client(node.wallets[0]) as client:
        assert client.submit_grant(shorter).expires


def _refusals(node: NodeProcess) -> list[dict[str, Any]]:
    """The refused events of the node's access log, as its operator lists them."""
    listed = json.loads(run_cli("sov-node", "log", "events", "--home", str(node.home),
                                "--limit", "100000", "--json").stdout)
    return [e for e in listed if e.get("outcome") == "refused"]


def test_every_replay_is_written_to_the_access_log(sqlite_node: NodeProcess) -> None:
    """A replay refused by the in-memory check, of a Query (naming its grant) and of any other
    call, is an access event like every other refusal, under the caller who sent it."""
    node, requester = sqlite_node, Identity.generate()
    [grant_id] = grant_all(node, requester, node.wallets[:1])
    query = {"dataset": "contacts", "purpose": PURPOSE, "measures": ["count"],
             "grant_ids": [grant_id]}
    before = len(_refusals(node))
    with node.client(requester) as client:
        envelope, nonce = client.sealed_request("Query", {"query": query})
        client.send("Query", envelope, nonce)  # answered (or refused by k): logged either way
        status, status_nonce = client.sealed_request("GrantStatus", {"grant_ids": []})
        client.send("GrantStatus", status, status_nonce)
        for method, sealed, once in (("Query", envelope, nonce),
                                     ("GrantStatus", status, status_nonce)):
            with pytest.raises(NodeError, match="already received"):
                client.send(method, sealed, once)
    refused = _refusals(node)
    replays = [e for e in refused[before:] if e.get("requester") == requester.did
               and e.get("reason") == "replay"]
    assert len(replays) == 2, refused[before:]
    assert grant_id in replays[0]["grant_ids"]  # the replayed Query names the grant it used
    assert replays[1]["grant_ids"] == []


def test_query_and_privacy_budgets_are_enforced(sqlite_node: NodeProcess) -> None:
    node, requester = sqlite_node, Identity.generate()
    ids = grant_all(node, requester, node.wallets, purpose="churn-analysis", max_queries=2)
    body = {"purpose": "churn-analysis", "grant_ids": ids}
    _ask(node, requester, **body)
    _ask(node, requester, **body)
    assert "queries" in _refused(node, requester, grpc.StatusCode.RESOURCE_EXHAUSTED, **body)
    dp_ids = grant_all(node, requester, node.wallets, purpose="service-improvement",
                       dp_epsilon=1.0)
    dp_body = {"purpose": "service-improvement", "grant_ids": dp_ids, "epsilon": 0.6}
    answer = _ask(node, requester, **dp_body)
    assert answer.dp is not None and answer.dp["epsilon"] == 0.6
    assert answer.dp["library"] == "opendp" and answer.dp["unit"] == "customer"
    # 0.4 left < 0.6 asked: every grant is left out, so the answer is refused (a budget is
    # never exceeded, not even by a rounding tolerance), and nothing more is debited.
    assert "spent its privacy budget" in _refused(node, requester,
                                                  grpc.StatusCode.RESOURCE_EXHAUSTED, **dp_body)
    with node.client(node.wallets[3]) as client:
        status = client.grant_status([dp_ids[3]])[0]
    assert status.epsilon_spent == 0.6 and status.epsilon_left == 0.4
    assert status.epsilon_budget == 1.0


# The differencing attack: in dp mode tests/agent_node/test_privacy_attacks.py, in threshold
# mode (the overlap control) tests/agent_node/test_privacy_threshold.py.


def test_cli_bind_log_head_and_requester_cli(sqlite_node: NodeProcess, tmp_path: Any) -> None:
    node = sqlite_node
    wallet = Identity.generate()
    bound = run_cli("sov-node", "subjects", "bind", "--home", str(node.home), "C049", wallet.did)
    assert wallet.did in bound.stdout and "C049" not in bound.stdout
    bad = run_cli("sov-node", "subjects", "bind", "--home", str(node.home), "C1", "did:key:zz",
                  check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    head = json.loads(run_cli("sov-node", "log", "head", "--home", str(node.home)).stdout)
    assert head["type"] == "AccessLogHead" and "proof" in head
    home = tmp_path / "requester"
    did = run_cli("sov-query", "init", "--home", str(home)).stdout.split()[-1]
    requester = Identity.generate()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(node.ca_pem)
    from consent.keystore import load_identity

    requester = load_identity(home / "requester.key", "correct horse battery staple")
    assert requester.did == did
    grant_all(node, requester, node.wallets, purpose="quote-generation",
              scopes=("transaction", "sentiment"))
    out = run_cli("sov-query", "ask", "--home", str(home), "--node", node.address, "--ca",
                  str(ca), "--dataset", "contacts", "--measure", "count", "--measure",
                  "avg:age", "--group-by", "y", "--filter", "age >= 30", "--purpose",
                  "quote-generation", "--json")
    answer = json.loads(out.stdout)
    assert answer["requester"] == did and answer["mode"] == "dp"
    # y declares its keys public: both are released, each value with its 95 % interval.
    assert [g["key"] for g in answer["groups"]] == [["no"], ["yes"]]
    for group in answer["groups"]:
        low, high = group["accuracy"]["count"]["ci95"]
        assert low <= group["values"]["count"] <= high
    table = run_cli("sov-query", "ask", "--home", str(home), "--node", node.address, "--ca",
                    str(ca), "--dataset", "contacts", "--measure", "count", "--group-by", "y",
                    "--purpose", "quote-generation").stdout
    assert "differentially private per customer: epsilon 1" in table
    assert table.splitlines()[1].startswith("no ") and " [" in table.splitlines()[1]
    refused = run_cli("sov-query", "ask", "--home", str(home), "--node", node.address, "--ca",
                      str(ca), "--dataset", "contacts", "--measure", "count", "--purpose",
                      "quote-generation", "--group-by", "education", check=False)
    assert refused.returncode == 1 and "identity" in refused.stderr
    assert "Traceback" not in refused.stderr
