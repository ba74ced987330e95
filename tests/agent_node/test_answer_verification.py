"""The requester verifies the node's signed answer (issue 3, Deliver 8) before using it: a
changed aggregate, an answer signed by another key, and an answer to another request are all
refused. The forged replies are made with the real node key read from the node home (the
strongest attacker short of breaking Ed25519), and fed to the client's reply check."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agent_node.client import NodeProtocolError
from agent_node.home import load_home
from consent.canonical import canonicalize
from consent.envelope import seal
from consent.identity import Identity
from consent.integrity import sign_document
from tests.agent_node.conftest import PASSPHRASE, NodeProcess, grant_all

QUERY = {"dataset": "contacts", "purpose": "marketing-analytics", "measures": ["count"]}


def _reply(document: dict[str, Any], sender: Identity, caller: Identity) -> bytes:
    return seal(canonicalize(document), sender, caller.did)


def test_requester_refuses_altered_impostor_and_misaddressed_answers(
        sqlite_node: NodeProcess) -> None:
    requester = Identity.generate()
    grant_all(sqlite_node, requester, sqlite_node.wallets[:10])
    node_key = load_home(sqlite_node.home, PASSPHRASE).identity
    with sqlite_node.client(requester) as client:
        envelope, nonce = client.sealed_request("Query", {"query": QUERY})
        genuine = client.send("Query", envelope, nonce)
        count = genuine["body"]["answer"]["groups"][0]["values"]["count"]

        # The untouched reply, re-sealed, still verifies: the refusals below are the edits.
        assert client._verify_reply("Query", _reply(genuine, node_key, requester),
                                    nonce)["body"]["answer"]["groups"]

        altered = copy.deepcopy(genuine)
        altered["body"]["answer"]["groups"][0]["values"]["count"] = count + 1
        with pytest.raises(NodeProtocolError, match="does not verify"):
            client._verify_reply("Query", _reply(altered, node_key, requester), nonce)

        impostor = Identity.generate()
        resigned = sign_document({k: v for k, v in altered.items() if k != "proof"}, impostor)
        with pytest.raises(NodeProtocolError, match="not sealed and signed by the node"):
            client._verify_reply("Query", _reply(resigned, impostor, requester), nonce)

        with pytest.raises(NodeProtocolError, match="answers another request"):
            client._verify_reply("Query", _reply(genuine, node_key, requester), "0" * 32)
