"""The requester side (the CRM application): seal an aggregate query to one node and verify
the node's signed answer (W3C Data Integrity eddsa-jcs-2022 over RFC 8785 JSON).

Sealing follows the node's crypto profile (``agent_node.client.NodeClient``): a NaCl box in
``intl``; in ``gm`` an SM2-authenticated SM4-GCM session, so a requester that keeps one
``NodeClient`` open pays the SM2 cost once and then only symmetric crypto per query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent_node.client import NodeClient, NodeProtocolError
from agent_node.query import query_from_dict
from consent.identity import Identity


@dataclass(frozen=True)
class Answer:
    """A verified answer: aggregates per group, and the node-signed document as evidence."""

    node_did: str
    dataset: str
    measures: list[str]
    group_by: list[str]
    groups: list[dict[str, Any]]
    suppressed_groups: int
    k: int
    dp: dict[str, Any] | None
    event_seq: int
    document: dict[str, Any] = field(repr=False)


class Requester:
    def __init__(self, identity: Identity, *, timeout: float = 30.0) -> None:
        self.identity = identity
        self.timeout = timeout

    def ask(self, node_address: str, ca_pem: bytes, query: dict[str, Any]) -> Answer:
        """Validate ``query`` locally, send it sealed, return the verified answer."""
        query_from_dict(query)  # fail fast with the same messages the node would give
        with NodeClient(node_address, ca_pem, self.identity, timeout=self.timeout) as client:
            return self.ask_with(client, query)

    def ask_with(self, client: NodeClient, query: dict[str, Any]) -> Answer:
        document = client.query(query)
        answer = document["body"].get("answer")
        if not isinstance(answer, dict) or answer.get("requester") != self.identity.did:
            raise NodeProtocolError("the node's answer is not addressed to this requester")
        if answer.get("node") != client.node_info().did:
            raise NodeProtocolError("the answer names another node")
        return Answer(
            node_did=answer["node"], dataset=answer["dataset"], measures=answer["measures"],
            group_by=answer["group_by"], groups=answer["groups"],
            suppressed_groups=answer["suppressed_groups"], k=answer["k"], dp=answer["dp"],
            event_seq=answer["event_seq"], document=document)
