"""The gRPC LedgerService as a real TLS server, used through the verifying LedgerClient."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger.anchor import Anchorer, AnchorStore, embedded_web3
from ledger.client import LedgerClient, LedgerClientError
from ledger.errors import LedgerError
from ledger.log import Log
from ledger.models import LogPublicKey
from ledger.service import SERVICE_NAME, start_server
from ledger.verify import CheckFailed, verify_receipt
from protos.sovereign.v1 import ledger_pb2 as pb
from protos.sovereign.v1 import ledger_pb2_grpc as pb_grpc
from protos.transport import secure_channel

from .conftest import customer_grant as grant_event
from .conftest import node_head


@pytest.fixture()
def server(
    log: Log, ledger_home, authors, tmp_path: Path
) -> Iterator[tuple[str, bytes, AnchorStore]]:
    home, _ = ledger_home
    tls = home / "tls"
    store = AnchorStore(tmp_path / "anchors.db")
    running = start_server(
        log,
        address="127.0.0.1:0",
        cert_pem=(tls / "server.pem").read_bytes(),
        key_pem=(tls / "server.key").read_bytes(),
        authors=authors,
        anchors=store,
    )
    yield f"127.0.0.1:{running.port}", (tls / "ca.pem").read_bytes(), store
    running.stop(None)


def test_append_and_fetch_receipts_over_tls(server, ledger_home) -> None:
    address, ca, _ = server
    public: LogPublicKey = ledger_home[1]
    with LedgerClient(address, ca, log_key=public) as client:
        first = client.append(grant_event(1))
        batch = client.append_many([grant_event(i) for i in range(2, 8)])
        assert [r.index for r in [first, *batch]] == list(range(7))
        again = client.receipt(first.entry_hash)
        assert verify_receipt(again, public).checkpoint.size == 7
        head = client.latest_tree_head()
        assert head.size == 7
        proof = client.consistency(1)
        assert proof.new_checkpoint.split("\n")[1] == "7"


def test_client_without_pinned_key_pins_the_servers_key(server, ledger_home) -> None:
    address, ca, _ = server
    with LedgerClient(address, ca) as client:
        client.append(grant_event(3))
        assert client.log_key == ledger_home[1]


def test_client_rejects_receipts_signed_by_another_key(server, tmp_path: Path) -> None:
    from ledger.home import init_home

    address, ca, _ = server
    stranger = init_home(tmp_path / "stranger", origin="ledger.test.example/log", passphrase="x")
    with LedgerClient(address, ca, log_key=stranger) as client, pytest.raises(CheckFailed):
        client.append(grant_event(4))


def test_bad_input_is_invalid_argument_and_changes_nothing(server, log: Log) -> None:
    address, ca, _ = server
    stub = pb_grpc.LedgerServiceStub(secure_channel(address, ca))
    cases = [
        (pb.AppendRequest(version=1, events=[b"not json"]), "not UTF-8 JSON"),
        (pb.AppendRequest(version=1, events=[b"[1, 2]"]), "JSON object"),
        (pb.AppendRequest(version=1, events=[]), "batch is empty"),
        (
            pb.AppendRequest(
                version=1,
                events=[json.dumps(grant_event(1)).encode(),
                        json.dumps({**grant_event(2), "email": "a@b.example"}).encode()],
            ),
            "does not allow the field(s) email",
        ),
        (pb.AppendRequest(version=7, events=[json.dumps(grant_event(1)).encode()]), "version"),
    ]
    for request, message in cases:
        with pytest.raises(grpc.RpcError) as failure:
            stub.Append(request, timeout=10)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in failure.value.details()
        assert "a@b.example" not in failure.value.details()
    assert log.size == 0
    with pytest.raises(grpc.RpcError) as failure:
        stub.GetReceipt(pb.GetReceiptRequest(version=1, entry_hash=b"\x01" * 32), timeout=10)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as failure:
        stub.GetReceipt(pb.GetReceiptRequest(version=1, entry_hash=b"short"), timeout=10)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as failure:
        stub.GetConsistencyProof(pb.GetConsistencyProofRequest(version=1, old_size=5), timeout=10)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signed no tree head of size 5" in failure.value.details()


def test_client_error_for_unknown_entry_is_a_sentence(server, ledger_home) -> None:
    address, ca, _ = server
    with LedgerClient(address, ca, log_key=ledger_home[1]) as client:
        with pytest.raises(LedgerClientError, match="NOT_FOUND"):
            client.receipt("00" * 32)
        with pytest.raises(LedgerError):
            client.receipt("zz")


def test_health_and_anchors_with_receipt_links(server, log: Log, ledger_home) -> None:
    address, ca, store = server
    channel = secure_channel(address, ca)
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    with LedgerClient(address, ca, log_key=ledger_home[1]) as client:
        receipt = client.append_many([grant_event(i) for i in range(5)])[1]
        anchorer = Anchorer(store, embedded_web3, log.origin)
        store.request(log.latest_note())
        assert anchorer.run_once()[1] == []
        client.append(grant_event(99))
        [anchor] = client.anchors()
        assert anchor.size == 5
        linked = client.receipt(receipt.entry_hash, with_anchors=True)
        assert [link.anchor.size for link in linked.anchors] == [5]
        anchorer.verify(linked.anchors[0].anchor)


def test_a_batch_whose_receipts_cannot_be_sent_back_is_refused_before_writing(
    server, log: Log, ledger_home
) -> None:
    # QA: 5,000 events (under the log's 10,000 batch limit) were appended, then the ~5 MB
    # answer exceeded gRPC's 4 MiB message limit: the client saw RESOURCE_EXHAUSTED for
    # entries that were in the log. Now the service refuses such a batch up front.
    address, ca, _ = server
    events = [node_head(i) for i in range(5000)]
    with LedgerClient(address, ca, log_key=ledger_home[1]) as client:
        with pytest.raises(LedgerClientError, match=r"INVALID_ARGUMENT.*split the batch"):
            client.append_many(events)
        assert log.size == 0
        receipts = client.append_many(events[:2000])
    assert len(receipts) == 2000 and log.size == 2000
