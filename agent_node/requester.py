"""The requester side (the CRM application): seal an aggregate query to one node and verify
the node's signed answer (W3C Data Integrity eddsa-jcs-2022 over RFC 8785 JSON); or ask many
nodes through a coordinator, one envelope sealed per node, and combine their verified answers
(``ask_network``, ``agent_node.combine``).

Sealing follows the node's crypto profile (``agent_node.client.NodeClient``): a NaCl box in
``intl``; in ``gm`` an SM2-authenticated SM4-GCM session, so a requester that keeps one
``NodeClient`` open pays the SM2 cost once and then only symmetric crypto per query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc

from agent_node.client import NodeClient, NodeError, NodeProtocolError
from agent_node.combine import NodeAnswer, combine, expand_measures
from agent_node.network import CoordinatorClient
from agent_node.query import query_from_dict
from consent import protocol
from consent.identity import Identity


@dataclass(frozen=True)
class Answer:
    """A verified answer: aggregates per group, and the node-signed document as evidence."""

    node_did: str
    dataset: str
    measures: list[str]
    group_by: list[str]
    groups: list[dict[str, Any]]  # {"key", "values"} and in dp mode "accuracy"
    mode: str  # "dp" (differentially private) or "threshold" (k-suppression only)
    k: int | None  # threshold mode's k
    dp: dict[str, Any] | None  # dp mode: epsilon, delta, unit, confidence, mechanisms
    note: str | None  # why nothing was released, when nothing was
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
        return self._answer(client, document["body"].get("answer"), document)

    def ask_report(self, node_address: str, ca_pem: bytes, queries: list[dict[str, Any]]
                   ) -> list[Answer | NodeError]:
        """Several queries in one sealed request (a report): validated locally first, then
        answered in one signed reply, each as if asked alone. One entry per query, in order:
        its verified ``Answer``, or the ``NodeError`` it was refused with (a refused query
        refuses only itself)."""
        for query in queries:
            query_from_dict(query)  # fail fast with the same messages the node would give
        with NodeClient(node_address, ca_pem, self.identity, timeout=self.timeout) as client:
            return self.ask_report_with(client, queries)

    def ask_report_with(self, client: NodeClient, queries: list[dict[str, Any]]
                        ) -> list[Answer | NodeError]:
        document, results = client.report(queries)
        return [self._answer(client, r["answer"], document) if "answer" in r
                else refusal_error(r["refused"]) for r in results]

    def _answer(self, client: NodeClient, answer: Any, document: dict[str, Any]) -> Answer:
        if not isinstance(answer, dict) or answer.get("requester") != self.identity.did:
            raise NodeProtocolError("the node's answer is not addressed to this requester")
        if answer.get("node") != client.node_info().did:
            raise NodeProtocolError("the answer names another node")
        return Answer(
            node_did=answer["node"], dataset=answer["dataset"], measures=answer["measures"],
            group_by=answer["group_by"], groups=answer["groups"], mode=answer["mode"],
            k=answer.get("k"), dp=answer.get("dp"), note=answer.get("note"),
            event_seq=answer["event_seq"], document=document)


def refusal_error(refused: dict[str, str]) -> NodeError:
    """A report's refused query as the ``NodeError`` it would have raised asked alone."""
    code = grpc.StatusCode.__members__.get(refused["code"], grpc.StatusCode.UNKNOWN)
    return NodeError(refused["message"], code)


class RegionRefused(NodeProtocolError):
    """A node named for a question lies outside the requester's allowed regions."""


@dataclass(frozen=True)
class NetworkAnswer:
    """Answers of several nodes, each verified, and their combination (agent_node.combine)."""

    combined: dict[str, Any]
    answers: list[NodeAnswer]

    @property
    def missing(self) -> list[NodeAnswer]:
        return [a for a in self.answers if a.outcome != "answered"]


def _node_answer(requester: str, node: Any, routed: Any) -> NodeAnswer:
    """A routed result as a NodeAnswer; an answer not addressed to us counts as a bad one."""
    base = {"node_did": node.did, "name": node.registration.name,
            "region": node.registration.region}
    if routed.outcome != "answered":
        return NodeAnswer(**base, outcome=routed.outcome, message=routed.message)
    # A report's item carries its answer beside the one signed reply it came in.
    answer = routed.answer if isinstance(routed, _Item) else routed.document["body"].get("answer")
    if not isinstance(answer, dict) or answer.get("requester") != requester \
            or answer.get("node") != node.did:
        return NodeAnswer(**base, outcome="bad-signature",
                          message="the answer is not addressed to this requester by this node")
    return NodeAnswer(**base, outcome="answered", mode=answer.get("mode"),
                      groups=answer.get("groups", []), dp=answer.get("dp"),
                      note=answer.get("note"), document=routed.document)


def _chosen_nodes(coordinator: CoordinatorClient, dataset: str, nodes: list[str] | None,
                  regions: list[str] | None) -> list[Any]:
    """The registered nodes offering ``dataset`` to ask (the DIDs in ``nodes`` if given),
    within ``regions``."""
    listed = coordinator.nodes(dataset=dataset)
    if nodes:
        by_did = {n.did: n for n in listed}
        unknown = [d for d in nodes if d not in by_did]
        if unknown:
            raise NodeProtocolError(f"{len(unknown)} named node(s) are not registered with the "
                                    f"coordinator for dataset {dataset!r}: "
                                    f"{unknown[0]}")
        chosen = [by_did[d] for d in dict.fromkeys(nodes)]
        outside = [n for n in chosen if regions and n.registration.region not in regions]
        if outside:
            raise RegionRefused(f"node {outside[0].registration.name!r} is in region "
                                f"{outside[0].registration.region!r}, outside the allowed "
                                f"regions {', '.join(regions or [])}; nothing was sent")
    else:
        chosen = [n for n in listed if not regions or n.registration.region in regions]
    if not chosen:
        raise NodeProtocolError(f"no registered node offers dataset {dataset!r}"
                                + (" in the allowed regions" if regions else ""))
    return chosen


def _sent(query: dict[str, Any], regions: list[str] | None) -> dict[str, Any]:
    sent = {**query, "measures": expand_measures(list(query["measures"]))}
    if regions:
        sent["regions"] = list(regions)
    return sent


def ask_network(requester: Identity, coordinator: CoordinatorClient, query: dict[str, Any], *,
                nodes: list[str] | None = None, regions: list[str] | None = None,
                deadline_ms: int = 0) -> NetworkAnswer:
    """Ask every node offering the dataset (or the DIDs in ``nodes``) through the
    coordinator: one envelope sealed per node, each answer verified, then combined.

    ``regions`` are the regions this requester may reach: a named node elsewhere is refused
    here (``RegionRefused``, nothing sent), unnamed ones are left out, and the regions travel
    inside the sealed query so that every node refuses it outside them too.
    """
    query_from_dict(query)  # fail fast with the node's own messages
    chosen = _chosen_nodes(coordinator, query["dataset"], nodes, regions)
    routed = coordinator.fan_out(
        "Query", [(coordinator.client_for(n, requester), {"query": _sent(query, regions)})
                  for n in chosen], deadline_ms=deadline_ms)
    answers = [_node_answer(requester.did, n, r) for n, r in zip(chosen, routed, strict=True)]
    return NetworkAnswer(combine(list(query["measures"]), list(query.get("group_by", [])),
                                 answers), answers)


def ask_network_report(requester: Identity, coordinator: CoordinatorClient,
                       queries: list[dict[str, Any]], *, nodes: list[str] | None = None,
                       regions: list[str] | None = None, deadline_ms: int = 0
                       ) -> list[NetworkAnswer]:
    """Several questions of one dataset asked of the network at once: each node gets one
    sealed envelope carrying all of them as a report (``consent.protocol``), answers them in
    one signed reply, and each question's answers are combined as ``ask_network`` would.
    A question a node refuses is missing from that question's combination only."""
    if not queries:
        raise NodeProtocolError("give at least one question")
    for query in queries:
        query_from_dict(query)  # fail fast with the node's own messages
    if len({q["dataset"] for q in queries}) != 1:
        raise NodeProtocolError("the questions of one network report must ask one dataset; "
                                "ask the others in a report of their own")
    chosen = _chosen_nodes(coordinator, queries[0]["dataset"], nodes, regions)
    body = protocol.report_body([_sent(q, regions) for q in queries])
    routed = coordinator.fan_out(
        "Query", [(coordinator.client_for(n, requester), body) for n in chosen],
        deadline_ms=deadline_ms)
    per_node = [_report_results(n, r, len(queries)) for n, r in zip(chosen, routed, strict=True)]
    out = []
    for i, query in enumerate(queries):
        answers = [_node_answer(requester.did, n, item[i])
                   for n, item in zip(chosen, per_node, strict=True)]
        out.append(NetworkAnswer(combine(list(query["measures"]),
                                         list(query.get("group_by", [])), answers), answers))
    return out


@dataclass(frozen=True)
class _Item:
    """One question's share of a node's routed report reply, shaped like a routed answer."""

    outcome: str
    message: str = ""
    document: dict[str, Any] | None = None  # the node-signed reply to the whole report
    answer: dict[str, Any] | None = None


def _report_results(node: Any, routed: Any, count: int) -> list[_Item]:
    """Per question: the node's answer (inside its one signed reply document) or why not."""
    if routed.outcome != "answered":
        return [_Item(routed.outcome, routed.message)] * count
    try:
        results = protocol.report_results(routed.document["body"], count)
    except protocol.ProtocolError as exc:
        return [_Item("bad-signature", str(exc))] * count
    return [_Item("answered", "", routed.document, r["answer"])
            if "answer" in r else _Item("refused", r["refused"]["message"]) for r in results]
