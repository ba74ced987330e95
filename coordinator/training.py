"""Training runs on the coordinator side: the ServerApp running FedAvg or FedProx over the
nodes' ClientApps (``fl.client``), with every wait bounded.

Flower 1.41's strategies wait forever for nodes (``sample_nodes`` loops until enough are
connected) and its grids pull replies every 3 s. ``BoundedGrid`` wraps the run's grid so that
(1) waiting for nodes ends after ``node_wait`` seconds with ``TrainingRunError``, (2) each
phase waits at most ``round_timeout`` seconds, polling every ``poll`` seconds, and (3) a node
that did not answer, or refused, is dropped for the rest of the run: the run finishes with the
nodes that remain while at least ``min_nodes`` do, and fails otherwise.

``run_training`` is the whole run (private scaling statistics, then the rounds); the
``ServerApp`` ``app`` calls it with the plan and options from the run config and writes the
outcome (model, per-round metrics, lineage) as JSON into ``result-dir``, where
``sov-coordinator train`` reads it and follows ``progress.jsonl``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx
from flwr.supercore.run import Run

from fl import models
from fl.features import Moments, combine_moments
from fl.protocol import (
    EMPTY,
    EXAMPLES,
    LINEAGE,
    MOMENTS,
    PLAN_KEY,
    SCALING_KEY,
    encode_plan,
    encode_scaling,
    parse_plan,
)

STRATEGIES = ("fedavg", "fedprox")


class TrainingRunError(Exception):
    """The run cannot go on (too few nodes, every node refused); the message says why."""


@dataclass(frozen=True)
class RunOptions:
    strategy: str = "fedavg"
    rounds: int = 3
    proximal_mu: float = 0.1
    min_nodes: int = 2
    node_wait: float = 30.0
    round_timeout: float = 120.0
    poll: float = 0.2
    evaluate: bool = False  # federated evaluation (refused by nodes for DP plans)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise TrainingRunError(f"strategy {self.strategy!r} is unknown: use "
                                   f"{' or '.join(STRATEGIES)}")
        if not 1 <= self.rounds <= 1000 or self.min_nodes < 1:
            raise TrainingRunError("rounds must be 1..1000 and min_nodes at least 1")


class BoundedGrid(Grid):
    """Delegates to ``inner``; bounds every wait and drops nodes that fail to answer."""

    def __init__(self, inner: Grid, options: RunOptions) -> None:
        self.inner, self.options = inner, options
        self.dropped: dict[int, str] = {}  # node id -> why it left the run
        self._short_since: float | None = None

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        """Connected nodes still in the run; raises once too few have been there for
        ``node_wait`` seconds (Flower's sampling would otherwise wait forever)."""
        ids = [n for n in self.inner.get_node_ids() if n not in self.dropped]
        if len(ids) >= self.options.min_nodes:
            self._short_since = None
            return ids
        now = time.monotonic()
        self._short_since = self._short_since or now
        if now - self._short_since >= self.options.node_wait:
            reasons = "; ".join(f"node {n}: {r}" for n, r in sorted(self.dropped.items()))
            raise TrainingRunError(
                f"only {len(ids)} node(s) available, fewer than the minimum of "
                f"{self.options.min_nodes}, after waiting {self.options.node_wait:g} s"
                + (f" ({reasons})" if reasons else ""))
        return ids

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        ids = list(self.inner.push_messages(messages))
        waiting = {i: m.metadata.dst_node_id for i, m in zip(ids, messages, strict=True) if i}
        deadline = time.monotonic() + min(timeout or self.options.round_timeout,
                                          self.options.round_timeout)
        replies: list[Message] = []
        while waiting:
            for reply in self.inner.pull_messages(list(waiting)):
                node = waiting.pop(reply.metadata.reply_to_message_id, None)
                if reply.has_error():
                    # The node we addressed: an error the SuperLink writes for a node that
                    # stopped heartbeating does not come from that node.
                    self.dropped[node if node is not None else reply.metadata.src_node_id] = (
                        reply.error.reason or f"error code {reply.error.code}")
                replies.append(reply)
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(self.options.poll)
        for node in waiting.values():
            self.dropped[node] = f"no reply within {self.options.round_timeout:g} s"
        return replies


@dataclass
class TrainingOutcome:
    state: dict[str, np.ndarray]
    rounds: list[dict[str, Any]] = field(default_factory=list)  # per-round metrics
    nodes: dict[str, list[str]] = field(default_factory=dict)  # node DID -> grant hashes
    dropped: dict[int, str] = field(default_factory=dict)
    scaling: dict[str, list[float]] = field(default_factory=dict)
    #: Each node's weight: its Laplace-noised customer count from the scaling phase (nodes
    #: never send an exact count; ``fl.client`` sends 1 where Flower expects one).
    weights: dict[int, float] = field(default_factory=dict)
    empty_rounds: list[float] = field(default_factory=list)  # bench: Flower-only rounds

    def weigh(self, replies: Iterable[Message]) -> float:
        """Set each reply's ``num-examples`` to its node's noisy count; their sum."""
        total = 0.0
        for reply in replies:
            weight = self.weights.get(reply.metadata.src_node_id, 1.0)
            reply.content.metric_records["metrics"][EXAMPLES] = weight
            total += weight
        return total

    def to_json(self) -> dict[str, Any]:
        return {"state": {k: v.tolist() for k, v in self.state.items()},
                "shapes": {k: list(v.shape) for k, v in self.state.items()},
                "rounds": self.rounds, "nodes": self.nodes,
                "dropped": {str(k): v for k, v in self.dropped.items()},
                "scaling": self.scaling,
                "weights": {str(k): v for k, v in self.weights.items()},
                "empty_rounds": self.empty_rounds}


def _lineage(outcome: TrainingOutcome, replies: Iterable[Message]) -> None:
    for reply in replies:
        if reply.has_error():
            continue
        record = reply.content.config_records.get(LINEAGE)
        if record is not None:
            hashes = outcome.nodes.setdefault(str(record["node"]), [])
            for h in json.loads(str(record["grants"])):
                if h not in hashes:
                    hashes.append(h)


def _strategy(options: RunOptions, outcome: TrainingOutcome,
              progress: Callable[[dict[str, Any]], None],
              dropped: dict[int, str] | None = None) -> FedAvg:
    base = FedProx if options.strategy == "fedprox" else FedAvg

    started: list[float] = []

    class Strategy(base):  # type: ignore[valid-type, misc]
        def configure_train(self, server_round: int, arrays: ArrayRecord,
                            config: ConfigRecord, grid: Grid) -> Iterable[Message]:
            started.append(time.monotonic())  # the round's wall time starts here
            return super().configure_train(server_round, arrays, config, grid)  # type: ignore[no-any-return]

        def aggregate_train(self, server_round: int, replies: Iterable[Message]
                            ) -> tuple[ArrayRecord | None, MetricRecord | None]:
            replies = list(replies)
            ok = [r for r in replies if not r.has_error()]
            if len(ok) < options.min_nodes:
                reasons = sorted({r.error.reason or "" for r in replies if r.has_error()}
                                 | {f"node {n}: {why}" for n, why in (dropped or {}).items()})
                raise TrainingRunError(
                    f"round {server_round}: only {len(ok)} node(s) trained, fewer than the "
                    f"minimum of {options.min_nodes}"
                    + (f" ({'; '.join(reasons)})" if reasons else ""))
            _lineage(outcome, ok)
            examples = outcome.weigh(ok)
            arrays, metrics = super().aggregate_train(server_round, ok)
            entry = {"round": server_round, "nodes": len(ok), "examples": round(examples),
                     "seconds": round(time.monotonic() - started[-1], 3),
                     **{k: float(v) for k, v in (metrics or {}).items()
                        if not isinstance(v, list)}}
            outcome.rounds.append(entry)
            progress(entry)
            return arrays, metrics

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                               ) -> MetricRecord | None:
            ok = [r for r in replies if not r.has_error()]
            outcome.weigh(ok)
            metrics = super().aggregate_evaluate(server_round, ok) if ok else None
            if metrics is not None and outcome.rounds:
                outcome.rounds[-1].update({k: float(v) for k, v in metrics.items()})
            return metrics

    kwargs: dict[str, Any] = {"fraction_train": 1.0,
                              "fraction_evaluate": 1.0 if options.evaluate else 0.0,
                              "min_train_nodes": options.min_nodes,
                              "min_evaluate_nodes": options.min_nodes,
                              "min_available_nodes": options.min_nodes}
    if options.strategy == "fedprox":
        kwargs["proximal_mu"] = options.proximal_mu
    return Strategy(**kwargs)  # type: ignore[no-any-return]


def scaling_phase(grid: BoundedGrid, plan_text: str, outcome: TrainingOutcome,
                  options: RunOptions) -> Any:
    """Every node's DP moments, combined into the scaling statistics."""
    plan = parse_plan(json.loads(plan_text))
    config = ConfigRecord({PLAN_KEY: plan_text})
    messages = [Message(RecordDict({"config": config}), node, MOMENTS)
                for node in grid.get_node_ids()]
    replies = [r for r in grid.send_and_receive(messages, timeout=options.round_timeout)
               if not r.has_error()]
    if len(replies) < options.min_nodes:
        reasons = "; ".join(sorted(set(grid.dropped.values()))) or "no replies"
        raise TrainingRunError(f"only {len(replies)} node(s) sent scaling statistics, fewer "
                               f"than the minimum of {options.min_nodes} ({reasons})")
    _lineage(outcome, replies)
    parts = [_moments(r.content.metric_records["metrics"]) for r in replies]
    outcome.weights = {r.metadata.src_node_id: max(1.0, part.count)
                       for r, part in zip(replies, parts, strict=True)}
    return combine_moments(parts, plan.features)


def _moments(metrics: MetricRecord) -> Moments:
    """A node's noisy moments from its reply (count, then sums and squares per column)."""
    count = metrics["count"]
    if not isinstance(count, int | float):
        raise TrainingRunError("a node's scaling statistics carry no number 'count'")

    def floats(key: str) -> tuple[float, ...]:
        value = metrics[key]
        if not isinstance(value, list):
            raise TrainingRunError(f"a node's scaling statistics carry no list {key!r}")
        return tuple(float(v) for v in value)

    return Moments(float(count), floats("sums"), floats("squares"))


def run_training(grid: Grid, signed_plan: dict[str, Any], options: RunOptions, *,
                 progress: Callable[[dict[str, Any]], None] | None = None,
                 evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
                 ) -> TrainingOutcome:
    """The whole run on ``grid`` (a SuperLink's, or ``fl.inprocess.InProcessGrid``)."""
    progress = progress or (lambda entry: None)
    bounded = grid if isinstance(grid, BoundedGrid) else BoundedGrid(grid, options)
    plan_text = encode_plan(signed_plan)
    plan = parse_plan(signed_plan)
    outcome = TrainingOutcome(state={})
    scaling = scaling_phase(bounded, plan_text, outcome, options)
    outcome.scaling = {"mean": list(scaling.mean), "std": list(scaling.std)}
    progress({"phase": "scaling", "nodes": len(outcome.nodes)})
    model = models.build(plan.model, plan.features.width, plan.seed)
    initial = ArrayRecord({k: Array(v) for k, v in models.get_state(model).items()})
    config = ConfigRecord({PLAN_KEY: plan_text, SCALING_KEY: encode_scaling(scaling)})
    strategy = _strategy(options, outcome, progress, bounded.dropped)
    result = strategy.start(grid=bounded, initial_arrays=initial, num_rounds=options.rounds,
                            timeout=options.round_timeout, train_config=config,
                            evaluate_config=ConfigRecord(dict(config)),
                            evaluate_fn=evaluate_fn)
    outcome.state = {k: a.numpy() for k, a in result.arrays.items()}
    outcome.dropped = dict(bounded.dropped)
    return outcome


def run_secagg(grid: BoundedGrid, context: Context, signed_plan: dict[str, Any],
               options: RunOptions, progress: Callable[[dict[str, Any]], None]
               ) -> TrainingOutcome:
    """The run with SecAgg+ (Flower's legacy ``SecAggPlusWorkflow``; the nodes run
    ``fl.client.make_secagg_client_app``): the scaling statistics as in ``run_training``,
    then FedAvg rounds in which the coordinator sees only the sum of the nodes' updates.
    Nodes count equally (it cannot reweight single updates); FedProx is not offered."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg as LegacyFedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    from fl.client import SECAGG_LINEAGE_GRANTS, SECAGG_LINEAGE_NODE

    if options.strategy != "fedavg":
        raise TrainingRunError("SecAgg+ runs use FedAvg: the coordinator sees only the sum")
    plan_text = encode_plan(signed_plan)
    plan = parse_plan(signed_plan)
    outcome = TrainingOutcome(state={})
    scaling = scaling_phase(grid, plan_text, outcome, options)
    outcome.scaling = {"mean": list(scaling.mean), "std": list(scaling.std)}
    progress({"phase": "scaling", "nodes": len(outcome.nodes)})
    model = models.build(plan.model, plan.features.width, plan.seed)
    names = list(models.get_state(model))
    initial = [models.get_state(model)[n] for n in names]
    config = {PLAN_KEY: plan_text, SCALING_KEY: encode_scaling(scaling)}
    nodes = len(grid.get_node_ids())
    started: list[float] = []

    class Strategy(LegacyFedAvg):  # type: ignore[misc]
        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any
                          ) -> Any:
            started.append(time.monotonic())
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            if len(results) < options.min_nodes:
                raise TrainingRunError(f"round {server_round}: only {len(results)} node(s) "
                                       f"trained, fewer than the minimum of {options.min_nodes}")
            for _, res in results:
                hashes = outcome.nodes.setdefault(str(res.metrics[SECAGG_LINEAGE_NODE]), [])
                hashes.extend(h for h in json.loads(str(res.metrics[SECAGG_LINEAGE_GRANTS]))
                              if h not in hashes)
            entry = {"round": server_round, "nodes": len(results), "secagg": 1.0,
                     "seconds": round(time.monotonic() - started[-1], 3)}
            outcome.rounds.append(entry)
            progress(entry)
            return super().aggregate_fit(server_round, results, failures)

    strategy = Strategy(fraction_fit=1.0, fraction_evaluate=0.0,
                        min_fit_clients=options.min_nodes, min_evaluate_clients=0,
                        min_available_clients=options.min_nodes,
                        initial_parameters=ndarrays_to_parameters(initial),
                        on_fit_config_fn=lambda rnd: {**config, "server-round": rnd})
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=options.rounds,
                                                                round_timeout=None),
                           strategy=strategy)
    if nodes < 3:
        raise TrainingRunError(f"SecAgg+ needs at least 3 nodes (it has {nodes}): with two, "
                               "each learns the other's update from the sum")
    # Every node holds a share of every other's secrets; any threshold of them can unmask a
    # dropped node's contribution, fewer learn nothing.
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=nodes, reconstruction_threshold=max(2, min(options.min_nodes, nodes - 1)),
        timeout=options.round_timeout))
    workflow(grid, legacy)
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

    final = legacy.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
    outcome.state = dict(zip(names, (np.asarray(a, dtype=np.float32) for a in final),
                             strict=True))
    outcome.dropped = dict(grid.dropped)
    return outcome


def empty_rounds(grid: BoundedGrid, options: RunOptions) -> list[float]:
    """Wall seconds of ``options.rounds`` rounds whose message every node answers at once
    (``query.empty``: no vault, no model): what a round costs in Flower alone."""
    times = []
    for _ in range(options.rounds):
        start = time.monotonic()
        nodes = grid.get_node_ids()
        replies = grid.send_and_receive([Message(RecordDict(), node, EMPTY) for node in nodes],
                                        timeout=options.round_timeout)
        if sum(not r.has_error() for r in replies) < options.min_nodes:
            raise TrainingRunError("too few nodes answered the empty round")
        times.append(round(time.monotonic() - start, 3))
    return times


# -- the ServerApp ---------------------------------------------------------------------------------

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run config: ``plan`` (the signed plan, JSON), ``result-dir``, and RunOptions fields
    with dashes (``strategy``, ``rounds``, ``proximal-mu``, ``min-nodes``, ``node-wait``,
    ``round-timeout``, ``poll``, ``evaluate``). Raises on failure, so the run is failed."""
    cfg = context.run_config
    out = Path(str(cfg["result-dir"]))
    options = RunOptions(**{f: type(getattr(RunOptions(), f))(cfg[f.replace("_", "-")])
                            for f in RunOptions.__dataclass_fields__
                            if f.replace("_", "-") in cfg})
    progress_file = out / "progress.jsonl"

    def progress(entry: dict[str, Any]) -> None:
        with progress_file.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")

    try:
        bounded = BoundedGrid(grid, options)
        if cfg.get("secagg"):
            outcome = run_secagg(bounded, context, json.loads(str(cfg["plan"])), options,
                                 progress)
        else:
            outcome = run_training(bounded, json.loads(str(cfg["plan"])), options,
                                   progress=progress)
        if cfg.get("empty-model"):  # bench/fl.py: Flower's own cost of a round
            outcome.empty_rounds = empty_rounds(bounded, options)
    except Exception as exc:
        (out / "failure.json").write_text(json.dumps({"error": str(exc)}))
        raise
    (out / "outcome.json").write_text(json.dumps(outcome.to_json()))
