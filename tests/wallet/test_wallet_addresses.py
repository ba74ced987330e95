"""One node, one address: ``127.0.0.1:PORT``, ``localhost:PORT`` and ``LOCALHOST:0PORT`` name
the same node, and a bare host is on port 7443, so the wallet cannot hold a node twice
(protos.transport.node_address, the one place every client reads a node's address: the
wallet's Python API, its CLI, ``sov-query --node``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protos.transport import NODE_PORT, canonical_address, free_port, node_address
from tests.wallet.conftest import NodeProcess
from tests.wallet.wallet_helpers import PASSPHRASE, WalletCLI
from wallet.service import Wallet


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


@pytest.mark.parametrize(("written", "canonical"), [
    ("Node.ACME.example", f"node.acme.example:{NODE_PORT}"),
    ("LOCALHOST", f"127.0.0.1:{NODE_PORT}"),
    ("127.0.0.1", f"127.0.0.1:{NODE_PORT}"),
    ("[::1]", f"[::1]:{NODE_PORT}"),
    ("localhost:9000", "127.0.0.1:9000"),
    ("not an address", "not an address"),
])
def test_a_node_address_without_a_port_is_on_the_node_port(written: str, canonical: str
                                                            ) -> None:
    assert node_address(written) == canonical


def test_the_wallet_api_holds_one_node_under_every_spelling(initialised: WalletCLI,
                                                            node: NodeProcess,
                                                            tmp_path: Path) -> None:
    """Wallet.add_node (the Python API, not only the CLI) normalises: a script adding the node
    as LOCALHOST:0PORT and again as 127.0.0.1:PORT holds one node, and export names it so."""
    wallet = Wallet.open(initialised.home, PASSPHRASE)
    try:
        first = wallet.add_node(f"LOCALHOST:0{node.port}", node.ca_pem)
        again = wallet.add_node(f"127.0.0.1:{node.port}", node.ca_pem)
        assert first.address == again.address == f"127.0.0.1:{node.port}"
        assert [n.address for n in wallet.store.nodes()] == [f"127.0.0.1:{node.port}"]
        node.bind(wallet.identity.did)
        exported = wallet.export(f"localhost:{node.port}", tmp_path / "mine.json")
        assert exported["node"] == f"127.0.0.1:{node.port}"
    finally:
        wallet.close()


def test_sov_query_reads_node_the_same_way(tmp_path: Path) -> None:
    """``sov-query ask --node LOCALHOST:0PORT`` dials 127.0.0.1:PORT (nothing listens there, so
    the one error line names the address it used)."""
    sov_query = str(Path(sys.executable).with_name("sov-query"))
    env = {**os.environ, "SOV_QUERY_PASSPHRASE": "requester passphrase"}
    home = tmp_path / "requester"
    subprocess.run([sov_query, "init", "--home", str(home)], env=env, check=True,
                   capture_output=True, timeout=60)
    node = NodeProcess(tmp_path)  # only for a real CA certificate to pass as --ca
    port = free_port()
    proc = subprocess.run([sov_query, "ask", "--home", str(home), "--node",
                           f"LOCALHOST:0{port}", "--ca", str(node.ca_path), "--dataset",
                           "orders", "--measure", "count", "--purpose", "quote-generation"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr and "unreachable" in proc.stderr, proc.stderr


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
