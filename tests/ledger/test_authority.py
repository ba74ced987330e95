"""Who may write to the ledger (ledger.authority), on a real `sov-ledger serve` over TLS.

Each attack from issue 11 against the served ledger: a party holding only the public CA,
forged and misplaced signatures, unknown authors, kinds an author may not write, replays and
oversized entries. Each is refused with its gRPC code and a sentence, and the tree size stays
as it was. Authors are registered with the real `sov-ledger authors` command while the
ledger runs.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from consent.identity import Identity
from ledger.authority import (
    check_entry,
    endorse_entry,
    sign_entry,
    signing_input,
    signing_input_of_entry,
)
from ledger.client import LedgerClient
from ledger.errors import PermissionDenied
from ledger.events import encode_event, make_event
from protos.sovereign.v1 import ledger_pb2 as pb
from protos.sovereign.v1 import ledger_pb2_grpc as pb_grpc
from protos.transport import secure_channel
from tests.wallet.conftest import SOV_LEDGER, LedgerProcess

from .conftest import NODE, OTHER_NODE, customer_grant, grant_event, node_head

COMMITMENT = "ab" * 32


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerProcess]:
    process = LedgerProcess(tmp_path_factory.mktemp("authority"))
    try:
        authors(process, "add", NODE.did, "--name", "distributor-eu", "--role", "node")
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def stub(served: LedgerProcess) -> pb_grpc.LedgerServiceStub:
    return pb_grpc.LedgerServiceStub(secure_channel(served.address, served.ca_path.read_bytes()))


def authors(ledger: LedgerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SOV_LEDGER, "authors", args[0], "--home", str(ledger.home), *args[1:]],
                          env=ledger.env, capture_output=True, text=True, timeout=60)


def size(stub: pb_grpc.LedgerServiceStub) -> int:
    return stub.GetLatestTreeHead(pb.GetLatestTreeHeadRequest(version=1), timeout=10).size


def append(stub: pb_grpc.LedgerServiceStub, *events: dict[str, Any]) -> pb.AppendResponse:
    raw = [json.dumps(e).encode() for e in events]
    return stub.Append(pb.AppendRequest(version=1, events=raw), timeout=10)


def refused(stub: pb_grpc.LedgerServiceStub, code: grpc.StatusCode, words: str,
            *events: dict[str, Any]) -> str:
    """Append ``events``; assert the refusal's code and sentence, and that nothing changed."""
    before = size(stub)
    with pytest.raises(grpc.RpcError) as failure:
        append(stub, *events)
    assert failure.value.code() == code, failure.value.details()
    details = failure.value.details()
    assert details.startswith("nothing was appended") and words in details, details
    assert size(stub) == before
    return details


def test_the_issue_attack_a_party_with_only_the_ca_cannot_write(stub) -> None:
    # Exactly the finding: an erasure and an access_head naming a node, sent with nothing but
    # the public CA. Now refused, nothing written.
    erasure = make_event("erasure", proof_digest="cd" * 32, subject_commitment=COMMITMENT,
                         node=NODE.did)
    head = make_event("access_head", node=NODE.did, head="ef" * 32, sequence=1)
    refused(stub, grpc.StatusCode.UNAUTHENTICATED, "no author signature", erasure, head)
    refused(stub, grpc.StatusCode.UNAUTHENTICATED, "no author signature",
            {**head, "author": NODE.did})


def test_forged_and_misplaced_signatures_are_unauthenticated(stub) -> None:
    impostor = Identity.generate()
    forged = {**sign_entry(node_head(100), impostor), "author": NODE.did}  # claims the node
    refused(stub, grpc.StatusCode.UNAUTHENTICATED, "does not verify", forged)
    moved = {**node_head(101), "sequence": 999}  # the node's real signature, another entry
    refused(stub, grpc.StatusCode.UNAUTHENTICATED, "does not verify", moved)
    garbage = {**node_head(102), "signature": "00" * 64}
    refused(stub, grpc.StatusCode.UNAUTHENTICATED, "does not verify", garbage)


def test_unknown_authors_and_kinds_not_allowed_are_permission_denied(stub, served) -> None:
    refused(stub, grpc.StatusCode.PERMISSION_DENIED, "not registered", node_head(1, OTHER_NODE))
    # A wallet writing an access head (about itself, signed with its own key).
    wallet = Identity.generate()
    refused(stub, grpc.StatusCode.PERMISSION_DENIED, "not registered", node_head(2, wallet))
    # ... or passing it off as endorsed by the node.
    endorsed = endorse_entry(sign_entry({**node_head(3, wallet), "endorser": NODE.did}, wallet),
                             NODE)
    refused(stub, grpc.StatusCode.PERMISSION_DENIED, "access_head", endorsed)
    # The registered node may not write an access head naming another node ...
    other = sign_entry(make_event("access_head", node=OTHER_NODE.did, head="12" * 32,
                                  sequence=1), NODE)
    refused(stub, grpc.StatusCode.PERMISSION_DENIED, "only by the node it names", other)
    # ... and a coordinator registered for models may not write access heads.
    coordinator = Identity.generate()
    assert authors(served, "add", coordinator.did, "--name", "coordinator",
                   "--role", "coordinator", "--kind", "model").returncode == 0
    head = sign_entry(make_event("access_head", node=coordinator.did, head="34" * 32,
                                 sequence=1), coordinator)
    refused(stub, grpc.StatusCode.PERMISSION_DENIED, "may not write access_head", head)
    model = sign_entry(make_event("model", model_digest="56" * 32, run_id="run-1"), coordinator)
    assert append(stub, model).receipts[0].entry == encode_event(model)


def test_a_replayed_append_is_refused_and_an_honest_retry_gets_its_receipts(
    stub, served
) -> None:
    first, second = node_head(200), node_head(201)
    append(stub, first)
    before = size(stub)
    with pytest.raises(grpc.RpcError) as failure:
        append(stub, first)
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "replayed append" in failure.value.details()
    with pytest.raises(grpc.RpcError) as failure:
        append(stub, second, second)
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "twice in the batch" in failure.value.details() and size(stub) == before
    # A client retrying a batch whose answer it lost gets every receipt, each entry once.
    with LedgerClient(served.address, served.ca_path.read_bytes()) as client:
        receipts = client.append_many([first, second])
    assert receipts[0].entry == encode_event(first) and receipts[1].index == before
    assert size(stub) == before + 1


def test_an_oversized_entry_is_invalid_argument(stub) -> None:
    digests = [f"{i:064x}" for i in range(300)]  # about 20 KiB of digests
    big = sign_entry(make_event("access_head", node=NODE.did, head="78" * 32, sequence=7,
                                grant_digests=digests), NODE)
    refused(stub, grpc.StatusCode.INVALID_ARGUMENT, "larger than 16 KiB", big)


def test_a_customers_grant_needs_its_nodes_endorsement(stub) -> None:
    key = Identity.generate()  # the per-grant key the wallet binds inside the grant
    accepted = customer_grant(300, key=key)
    [receipt] = append(stub, accepted).receipts
    assert json.loads(receipt.entry)["author"] == key.did  # not the customer's DID
    unendorsed = sign_entry({**grant_event(301), "nodes": [NODE.did]}, key)
    refused(stub, grpc.StatusCode.PERMISSION_DENIED, "not registered", unendorsed)
    by_stranger = customer_grant(302, node=OTHER_NODE)  # a node the ledger does not know
    refused(stub, grpc.StatusCode.PERMISSION_DENIED, "not registered", by_stranger)
    self_endorsed = {**customer_grant(303), "endorsement": key.sign(b"x").hex()}
    refused(stub, grpc.StatusCode.UNAUTHENTICATED, "endorsing node's signature", self_endorsed)
    not_named = endorse_entry(sign_entry({**grant_event(304), "nodes": [OTHER_NODE.did],
                                          "endorser": NODE.did}, key), NODE)
    refused(stub, grpc.StatusCode.PERMISSION_DENIED, "must be the node it names", not_named)


def test_authors_change_while_the_ledger_runs(stub, served) -> None:
    later = Identity.generate()
    refused(stub, grpc.StatusCode.PERMISSION_DENIED, "not registered", node_head(400, later))
    added = authors(served, "add", later.did, "--name", "late node", "--role", "node", "--json")
    assert added.returncode == 0 and json.loads(added.stdout)["kinds"] == [
        "access_head", "erasure", "grant", "revocation"]
    append(stub, node_head(400, later))
    again = authors(served, "add", later.did, "--name", "late node", "--role", "node")
    assert again.returncode == 1 and "registered already" in again.stderr
    assert "Traceback" not in again.stderr
    assert authors(served, "remove", later.did).returncode == 0
    refused(stub, grpc.StatusCode.PERMISSION_DENIED, "not registered", node_head(401, later))
    listed = json.loads(authors(served, "list", "--json").stdout)
    removed = next(a for a in listed["authors"] if a["did"] == later.did)
    assert removed["removed"] is not None  # still listed for auditors, with its removal time
    assert later.did not in authors(served, "list").stdout
    bad = authors(served, "add", "did:key:nonsense", "--name", "x", "--role", "node")
    assert bad.returncode == 1 and bad.stderr.startswith("error: the author must be a did:key")


@pytest.mark.parametrize("event", [
    node_head(5),
    customer_grant(6),
    sign_entry(make_event("revocation", revocation_digest="9a" * 32, grant_digest="9b" * 32,
                          subject_commitment=COMMITMENT, node=NODE.did), NODE),
])
def test_the_service_signing_input_is_the_documented_one(event: dict[str, Any]) -> None:
    # The service cuts the signature fields out of the canonical bytes instead of encoding
    # again; it must be exactly what signers and offline verifiers compute.
    assert signing_input_of_entry(encode_event(event)) == signing_input(event)
    assert signing_input(event).startswith(b"sovereign-fabric/ledger-entry/v1\n{")
    assert b"signature" not in signing_input(event) and b"endorsement" not in signing_input(event)


def test_offline_checks_without_the_registry_still_check_signatures_and_nodes() -> None:
    head = node_head(9, OTHER_NODE)
    assert check_entry(head, encode_event(head), None).author == OTHER_NODE.did
    wrong_node = sign_entry(make_event("erasure", proof_digest="cd" * 32,
                                       subject_commitment=COMMITMENT, node=NODE.did), OTHER_NODE)
    with pytest.raises(PermissionDenied, match="only by the node it names"):
        check_entry(wrong_node, encode_event(wrong_node), None)
    grant = customer_grant(10)
    assert check_entry(grant, encode_event(grant), None).endorser == NODE.did
