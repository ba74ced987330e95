"""An in-process Flower grid: each message is handed straight to a node's ``ClientApp``.

Flower's simulation engine needs Ray; this grid runs a ServerApp's strategy against
ClientApps in the same process, for unit tests and for ``bench/fl_quality.py``. A node can
be marked dead (``kill``): it stays listed, as a SuperNode the SuperLink has not yet noticed is
gone, but never answers, so the server's bounded waits are what ends its phase.
``MemorySource`` serves one node's examples from a list, with no consent layer (the bench's
centralised-vs-federated comparison; the node's real source is ``agent_node.training``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fl.client import Selection, make_client_app
from fl.protocol import parse_plan


class InProcessGrid(Grid):
    def __init__(self, apps: dict[int, ClientApp], run_id: int = 1,
                 node_config: dict[int, dict[str, Any]] | None = None) -> None:
        self.apps = apps
        self.dead: set[int] = set()
        self.contexts = {n: Context(run_id=run_id, node_id=n,
                                    node_config=(node_config or {}).get(n, {}),
                                    state=RecordDict(), run_config={}) for n in apps}
        self._run = Run.create_empty(run_id)
        # What Flower's runtime sets for a ServerApp process; Message() reads it.
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, 0
        self._replies: dict[str, Message] = {}
        self.handled: list[tuple[int, str]] = []  # (node, message type) delivered
        #: (node, message type, metrics as the node sent them) of every metrics reply
        self.sent_metrics: list[tuple[int, str, dict[str, Any]]] = []

    def kill(self, node_id: int) -> None:
        self.dead.add(node_id)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.apps)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid4().hex
            msg.metadata.__dict__["_run_id"] = self._run.run_id
            node = msg.metadata.dst_node_id
            ids.append(msg.metadata.message_id)
            if node in self.dead or node not in self.apps:
                continue
            self.handled.append((node, msg.metadata.message_type))
            try:
                # A copy, as the wire would give: a ClientApp (secaggplus_mod) may change the
                # records it received, which the server may have shared between messages.
                reply = self.apps[node](copy.deepcopy(msg), self.contexts[node])
            except Exception as exc:  # a crashing ClientApp, as a SuperNode reports it
                reply = Message(Error(code=2, reason=f"{type(exc).__name__}: {exc}"),
                                reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = node
            if not reply.has_error() and "metrics" in reply.content.metric_records:
                self.sent_metrics.append((node, msg.metadata.message_type,
                                          dict(reply.content.metric_records["metrics"])))
            self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(list(self.push_messages(messages))))


class MemorySource:
    """A node's examples from memory: every row takes part (no consent layer)."""

    def __init__(self, rows: list[dict[str, Any]], node: str = "memory") -> None:
        self.rows, self.node = rows, node
        self.commits: list[tuple[str, int, float]] = []

    def select(self, plan_document: dict[str, Any], run_id: int, phase: str,
               epsilon: float) -> Selection:
        return Selection(parse_plan(plan_document), self.rows, self.node, [])

    def commit(self, selection: Selection, phase: str, server_round: int,
               epsilon: float) -> None:
        self.commits.append((phase, server_round, epsilon))


def memory_app(rows: list[dict[str, Any]], node: str = "memory") -> tuple[ClientApp,
                                                                         MemorySource]:
    source = MemorySource(rows, node)
    return make_client_app(lambda context: source), source
