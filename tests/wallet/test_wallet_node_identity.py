"""Node identity is pinned (issue 11, item 3), on real processes: the first contact pins the
node's DID; an impostor holding the node's TLS key and address but another did:key gets no
grant and the wallet says why in one sentence; only `nodes trust --new-did` accepts it; a key
rotation the node signed with its old key (`sov-node rotate-key`) is followed without it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import tomli_w

from consent.identity import Identity
from tests.wallet.conftest import NODE_PASSPHRASE, NodeProcess
from tests.wallet.wallet_helpers import WalletCLI, assert_clean_error

SOV_NODE = str(Path(sys.executable).with_name("sov-node"))
CRM = Identity.generate().did


def sov_node(*args: str) -> str:
    env = {**os.environ, "SOV_NODE_PASSPHRASE": NODE_PASSPHRASE}
    return subprocess.run([SOV_NODE, *args], env=env, capture_output=True, text=True,
                          timeout=120, check=True).stdout


def grant(wallet: WalletCLI, node: NodeProcess) -> object:
    return wallet("grant", "--node", node.address, "--requester", CRM, "--purpose",
                  "quote-generation", "--scope", "transaction", "--ttl", "1h", "--json")


def node_grants(node: NodeProcess) -> list[dict[str, object]]:
    return json.loads(sov_node("grants", "list", "--home", str(node.home), "--json"))  # type: ignore[no-any-return]


def impostor_of(node: NodeProcess, root: Path) -> NodeProcess:
    """Another node home (its own did:key) serving at ``node``'s address with its TLS files."""
    impostor = NodeProcess(root)
    for name in ("ca.pem", "server.pem", "server.key"):
        shutil.copyfile(node.home / "tls" / name, impostor.home / "tls" / name)
    config_path = impostor.home / "node.toml"
    config = tomllib.loads(config_path.read_text())
    config["node"]["listen"] = node.address
    config_path.write_text(tomli_w.dumps(config))
    impostor.port, impostor.address = node.port, node.address
    return impostor


def test_an_impostor_with_the_nodes_tls_key_gets_no_grant(
    initialised: WalletCLI, node: NodeProcess, tmp_path: Path
) -> None:
    wallet = initialised
    did = json.loads(wallet.ok("whoami", "--json").output)["did"]
    node.bind(did)
    added = json.loads(wallet.ok("nodes", "add", node.address, "--ca", str(node.ca_path),
                                 "--json").output)
    assert added["did"] == node.did  # pinned on first contact
    assert grant(wallet, node).exit_code == 0  # type: ignore[attr-defined]
    node.stop()

    impostor = impostor_of(node, tmp_path / "impostor")
    impostor.bind(did)  # it would accept the grant, were one delivered
    impostor.start()
    try:
        assert impostor.did != node.did
        refused = grant(wallet, node)
        assert_clean_error(refused, f"presents the DID {impostor.did}",  # type: ignore[arg-type]
                           f"not the one you pinned ({node.did})",
                           f"nodes trust {node.address} --new-did {impostor.did}")
        assert node_grants(impostor) == []
        assert len(json.loads(wallet.ok("grants", "--offline", "--json").output)) == 1
        # Re-adding the node does not re-pin it either.
        assert_clean_error(wallet("nodes", "add", node.address, "--ca", str(node.ca_path)),
                           "not the one you pinned")
        # Trusting a DID other than the one presented changes nothing.
        other = Identity.generate().did
        assert_clean_error(wallet("nodes", "trust", node.address, "--new-did", other),
                           f"presents {impostor.did}, not the DID you gave")
        assert_clean_error(wallet("nodes", "trust", node.address, "--new-did", "did:web:x"),
                           "is not a did:key")
        listed = json.loads(wallet.ok("nodes", "list", "--json").output)
        assert listed[0]["did"] == node.did
        # Only the customer's explicit word accepts the new DID.
        trusted = json.loads(wallet.ok("nodes", "trust", node.address, "--new-did",
                                       impostor.did, "--json").output)
        assert trusted["did"] == impostor.did and trusted["retired_dids"] == [node.did]
        assert grant(wallet, node).exit_code == 0  # type: ignore[attr-defined]
        assert len(node_grants(impostor)) == 1
    finally:
        impostor.stop()


def test_a_rotation_signed_by_the_old_key_is_followed(
    initialised: WalletCLI, node: NodeProcess
) -> None:
    wallet = initialised
    node.bind(json.loads(wallet.ok("whoami", "--json").output)["did"])
    wallet.ok("nodes", "add", node.address, "--ca", str(node.ca_path), "--did", node.did)
    old = node.did
    node.stop()
    statement = json.loads(sov_node("rotate-key", "--home", str(node.home), "--json"))
    assert statement["previous"] == old and statement["type"] == "NodeKeyRotation"
    node.start()
    assert node.did == statement["did"] != old
    result = grant(wallet, node)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    [pinned] = json.loads(wallet.ok("nodes", "list", "--json").output)
    assert pinned["did"] == node.did and pinned["retired_dids"] == [old]
    assert len(node_grants(node)) == 1


def test_a_did_pinned_ahead_refuses_another_node(initialised: WalletCLI, node: NodeProcess
                                                 ) -> None:
    published = Identity.generate().did  # what the operator published: not this node's DID
    result = initialised("nodes", "add", node.address, "--ca", str(node.ca_path), "--did",
                         published)
    assert_clean_error(result, f"presents {node.did}, not the DID you gave", "nothing was saved")
    assert json.loads(initialised.ok("nodes", "list", "--json").output) == []


def test_a_signed_node_document_pins_the_did_ahead(initialised: WalletCLI, node: NodeProcess,
                                                   tmp_path: Path) -> None:
    published = tmp_path / "node-identity.json"
    published.write_text(sov_node("identity", "--home", str(node.home)))
    document = json.loads(published.read_text())
    assert document["did"] == node.did and document["type"] == "NodeIdentity"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**document, "did": Identity.generate().did}))
    assert_clean_error(initialised("nodes", "add", node.address, "--ca", str(node.ca_path),
                                   "--node-doc", str(forged)), "forged.json")
    added = json.loads(initialised.ok("nodes", "add", node.address, "--ca", str(node.ca_path),
                                      "--node-doc", str(published), "--json").output)
    assert added["did"] == node.did
    # A document naming another node's DID refuses this one.
    other = NodeProcess(tmp_path / "other")
    elsewhere = tmp_path / "other-identity.json"
    elsewhere.write_text(sov_node("identity", "--home", str(other.home)))
    assert_clean_error(initialised("nodes", "add", node.address, "--ca", str(node.ca_path),
                                   "--node-doc", str(elsewhere)), "is pinned to")
