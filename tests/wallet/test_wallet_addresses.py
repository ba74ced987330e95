"""One node, one address: ``127.0.0.1:PORT``, ``localhost:PORT`` and ``LOCALHOST:0PORT`` name
the same node, so the wallet cannot hold it twice (protos.transport.canonical_address, applied
to every address the wallet CLI reads)."""

from __future__ import annotations

import json

import pytest

from protos.transport import canonical_address
from tests.wallet.conftest import NodeProcess
from tests.wallet.wallet_helpers import WalletCLI


@pytest.mark.parametrize(("written", "canonical"), [
    ("127.0.0.1:7443", "127.0.0.1:7443"),
    ("localhost:7443", "127.0.0.1:7443"),
    (" LocalHost:07443 ", "127.0.0.1:7443"),
    ("[::ffff:127.0.0.1]:7443", "127.0.0.1:7443"),
    ("[0:0:0:0:0:0:0:1]:7443", "[::1]:7443"),
    ("Node.ACME.example.:7443", "node.acme.example:7443"),
    ("not an address", "not an address"),
])
def test_canonical_address(written: str, canonical: str) -> None:
    assert canonical_address(written) == canonical


def test_the_same_node_under_two_spellings_is_one_node(initialised: WalletCLI,
                                                      node: NodeProcess) -> None:
    port = node.address.rsplit(":", 1)[1]
    first = json.loads(initialised.ok("nodes", "add", f"127.0.0.1:{port}", "--ca",
                                      str(node.ca_path), "--json").output)
    again = json.loads(initialised.ok("nodes", "add", f"localhost:{port}", "--ca",
                                      str(node.ca_path), "--json").output)
    assert first["address"] == again["address"] == f"127.0.0.1:{port}"
    listed = json.loads(initialised.ok("nodes", "list", "--json").output)
    assert [n["address"] for n in listed] == [f"127.0.0.1:{port}"]
