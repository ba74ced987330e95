"""The node's operational surface on a real ``sov-node serve`` process: gRPC health checking,
server reflection, Prometheus metrics, the transport's message-size limit, and logs that
carry no customer values or secrets."""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import tomli_w
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent_node.client import NodeClient
from agent_node.home import load_home
from agent_node.requester import Requester
from consent.identity import Identity
from protos.sovereign.v1 import node_pb2, node_pb2_grpc
from protos.transport import free_port, secure_channel
from tests.agent_node.conftest import (
    BIN,
    PASSPHRASE,
    SUBJECTS,
    bind_all,
    env,
    grant_all,
    run_cli,
    sqlite_home,
)

SERVICE = "sovereign.v1.AgentNode"


@dataclass
class ServedNode:
    address: str
    ca_pem: bytes
    did: str
    metrics_port: int
    log_path: Path
    wallets: list[Identity]

    def client(self, who: Identity) -> NodeClient:
        return NodeClient(self.address, self.ca_pem, who)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory,
         bank_rows: list[dict[str, Any]]) -> Iterator[ServedNode]:
    tmp = tmp_path_factory.mktemp("plumbing")
    home = sqlite_home(tmp, bank_rows)
    metrics_port = free_port()
    config_path = home / "node.toml"
    config = tomllib.loads(config_path.read_text())
    config["node"]["metrics_port"] = metrics_port
    config_path.write_text(tomli_w.dumps(config))
    run_cli("sov-node", "sync", "--home", str(home))
    wallets = [Identity.generate() for _ in range(SUBJECTS)]
    bind_all(home, wallets)
    port_file = home / f"port-{uuid.uuid4().hex}"
    log_path = tmp / "node.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(BIN / "sov-node"), "serve", "--home", str(home), "--listen", "127.0.0.1:0",
             "--port-file", str(port_file)], env=env(), stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.05)
    loaded = load_home(home, PASSPHRASE)
    yield ServedNode(f"127.0.0.1:{port_file.read_text()}", loaded.ca_pem(),
                     loaded.identity.did, metrics_port, log_path, wallets)
    process.terminate()
    process.wait(timeout=10)


def test_health_reports_serving(node: ServedNode) -> None:
    with secure_channel(node.address, node.ca_pem) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_node_service(node: ServedNode) -> None:
    with secure_channel(node.address, node.ca_pem) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    names = {service.name for service in reply.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_plaintext_connection_is_refused(node: ServedNode) -> None:
    with grpc.insecure_channel(node.address) as channel:
        stub = node_pb2_grpc.AgentNodeStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetNodeInfo(node_pb2.NodeInfoRequest(version=1), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_oversized_message_refused_by_the_transport(node: ServedNode) -> None:
    with secure_channel(node.address, node.ca_pem, max_message_bytes=64 * 1024 * 1024) as ch:
        stub = node_pb2_grpc.AgentNodeStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Query(node_pb2.SealedRequest(version=1, envelope=b"\0" * (5 * 1024 * 1024)),
                       timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_metrics_count_requests_by_method_and_code(node: ServedNode) -> None:
    requester = Identity.generate()
    grant_all(node, requester, node.wallets)  # type: ignore[arg-type]  # same shape
    Requester(requester).ask(node.address, node.ca_pem, {
        "dataset": "contacts", "measures": ["count"], "group_by": ["job"],
        "purpose": "marketing-analytics"})
    url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'sov_node_requests_total{code="OK",method="Query"}' in text
    assert 'sov_node_requests_total{code="OK",method="SubmitGrant"}' in text
    assert "sov_node_request_seconds_bucket" in text


def test_logs_hold_no_customer_values_or_secrets(
    node: ServedNode, bank_rows: list[dict[str, Any]]
) -> None:
    test_metrics_count_requests_by_method_and_code(node)
    logs = node.log_path.read_text()
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(r.get("event") == "rpc" and r.get("method") == "Query"
               for r in records)  # the log is written at all, one JSON object per line
    assert PASSPHRASE not in logs
    for value in {row["education"] for row in bank_rows} | {row["customer_id"]
                                                             for row in bank_rows}:
        assert value not in logs, "a customer value appeared in the node's log"
