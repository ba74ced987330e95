"""The node side of a training run as a Flower ``ClientApp`` (Message API), over any source of
consented examples.

``make_client_app(open_source)`` registers ``query.moments``, ``train`` and ``evaluate``. Each
handler asks the node's ``TrainingSource`` (``agent_node.training`` reads the vault) for the
examples a verified plan may use in this phase, computes, and only then asks the source to
``commit`` the use (budgets debited with an access event); a refusal at either step becomes an
``Error`` reply with code ``REFUSED`` and a one-sentence reason, never a partial update.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from fl import models
from fl.features import encode, local_moments
from fl.protocol import (
    EXAMPLES,
    LINEAGE,
    PLAN_KEY,
    REFUSED,
    SCALING_KEY,
    PlanError,
    RunPlan,
    decode_plan,
    decode_scaling,
)
from fl.train import TrainConfig, TrainingError, evaluate, train


class Refused(Exception):
    """The node will not take part in this phase; the message is the reason (one sentence)."""


@dataclass
class Selection:
    """What a source found for one phase: the plan, one row per customer, and what the
    source needs to commit their use."""

    plan: RunPlan
    rows: Sequence[dict[str, Any]]
    node: str  # the node's DID
    grant_hashes: list[str]
    handle: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class TrainingSource(Protocol):
    def select(self, plan_document: dict[str, Any], run_id: int, phase: str,
               epsilon: float) -> Selection:
        """Verify the plan; the consenting customers' rows for ``phase`` spending
        ``epsilon`` each; raise ``Refused``."""

    def commit(self, selection: Selection, phase: str, server_round: int,
               epsilon: float) -> None:
        """Debit and log the use atomically (raise ``Refused`` if consent changed)."""


def make_client_app(open_source: Callable[[Context], TrainingSource]) -> ClientApp:
    app = ClientApp()

    @app.query("moments")
    def moments(msg: Message, context: Context) -> Message:
        return _guarded(msg, lambda: _moments(open_source(context), msg, context))

    @app.query("empty")
    def empty(msg: Message, context: Context) -> Message:
        return Message(RecordDict(), reply_to=msg)  # no vault, no model: Flower's cost only

    @app.train()
    def train_(msg: Message, context: Context) -> Message:
        return _guarded(msg, lambda: _train(open_source(context), msg, context))

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        return _guarded(msg, lambda: _evaluate(open_source(context), msg, context))

    return app


def _guarded(msg: Message, work: Callable[[], RecordDict]) -> Message:
    try:
        return Message(work(), reply_to=msg)
    except (Refused, PlanError, TrainingError, models.ModelSpecError) as exc:
        return Message(Error(code=REFUSED, reason=str(exc)), reply_to=msg)


def _config(msg: Message) -> ConfigRecord:
    config = msg.content.config_records.get("config")
    if config is None or PLAN_KEY not in config:
        raise Refused("the message carries no run plan; start runs with sov-coordinator train")
    return config


def _number(config: ConfigRecord, key: str, default: float) -> float:
    """A numeric run setting of the message (a ConfigRecord value may be of any record type)."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused(f"the message's {key!r} is not a number")
    return float(value)


def _lineage(sel: Selection) -> ConfigRecord:
    return ConfigRecord({"node": sel.node, "grants": json.dumps(sorted(sel.grant_hashes))})


def _moments(source: TrainingSource, msg: Message, context: Context) -> RecordDict:
    config = _config(msg)
    probe = decode_plan(config[PLAN_KEY])
    epsilon = float(probe.get("stats_epsilon", 0))
    sel = source.select(probe, context.run_id, "moments", epsilon)
    found = local_moments(sel.rows, sel.plan.features, sel.plan.stats_epsilon)
    source.commit(sel, "moments", 0, sel.plan.stats_epsilon)
    return RecordDict({"metrics": MetricRecord({
        "count": found.count, "sums": list(found.sums), "squares": list(found.squares)}),
        LINEAGE: _lineage(sel)})


def _train(source: TrainingSource, msg: Message, context: Context) -> RecordDict:
    config = _config(msg)
    probe = decode_plan(config[PLAN_KEY])
    dp = (probe.get("train") or {}).get("dp") or {}
    sel = source.select(probe, context.run_id, "train", float(dp.get("epsilon", 0.0)))
    plan = sel.plan
    x, y = encode(sel.rows, plan.features, decode_scaling(config.get(SCALING_KEY),
                                                          plan.features))
    model = models.build(plan.model, plan.features.width, plan.seed)
    arrays = msg.content.array_records.get("arrays")
    if arrays is None:
        raise Refused("the train message carries no model weights")
    models.set_state(model, {k: a.numpy() for k, a in arrays.items()})
    round_ = int(_number(config, "server-round", 0))
    cfg = TrainConfig(plan.train.epochs, plan.train.lr, plan.train.batch_size,
                      _number(config, "proximal-mu", 0.0), plan.train.dp)
    result = train(model, x, y, cfg, seed=plan.seed * 1000 + round_)
    source.commit(sel, "train", round_, result.epsilon)
    # No exact count of consenting customers leaves the node: the coordinator weights each
    # node by the Laplace-noised count it already released in the scaling phase.
    metrics: dict[str, Any] = {EXAMPLES: 1, "epsilon": result.epsilon}
    if plan.dp is None:  # a loss over raw data is released only when the plan has no DP
        metrics["train-loss"] = result.loss
    state = models.get_state(model)
    return RecordDict({"arrays": ArrayRecord({k: Array(np.ascontiguousarray(v))
                                              for k, v in state.items()}),
                       "metrics": MetricRecord(metrics), LINEAGE: _lineage(sel)})


def _evaluate(source: TrainingSource, msg: Message, context: Context) -> RecordDict:
    config = _config(msg)
    probe = decode_plan(config[PLAN_KEY])
    if (probe.get("train") or {}).get("dp") is not None:
        raise Refused("this plan trains with DP-SGD, so the node releases no noiseless "
                      "evaluation metrics; evaluate centrally on a held-out set")
    sel = source.select(probe, context.run_id, "evaluate", 0.0)
    plan = sel.plan
    x, y = encode(sel.rows, plan.features, decode_scaling(config.get(SCALING_KEY),
                                                          plan.features))
    model = models.build(plan.model, plan.features.width, plan.seed)
    arrays = msg.content.array_records.get("arrays")
    if arrays is None:
        raise Refused("the evaluate message carries no model weights")
    models.set_state(model, {k: a.numpy() for k, a in arrays.items()})
    found = evaluate(model, x, y)
    source.commit(sel, "evaluate", int(_number(config, "server-round", 0)), 0.0)
    return RecordDict({"metrics": MetricRecord({
        EXAMPLES: 1, "eval-loss": found.loss,
        "auc": found.auc if found.auc is not None else 0.5})})


# -- SecAgg+ (Flower's legacy API: the only one SecAggPlusWorkflow speaks in 1.41) ------------

SECAGG_LINEAGE_NODE = "lineage-node"
SECAGG_LINEAGE_GRANTS = "lineage-grants"


def make_secagg_client_app(open_source: Callable[[Context], TrainingSource]) -> ClientApp:
    """A ``client_fn`` ClientApp behind ``secaggplus_mod``: the coordinator sees only the sum
    of the nodes' updates. ``query.*`` messages (the scaling statistics) are answered by the
    Message API handlers of ``make_client_app`` before the legacy machinery sees them."""
    from flwr.client.mod import secaggplus_mod

    inner = make_client_app(open_source)

    def message_api_queries(msg: Message, context: Context, call_next: Any) -> Message:
        if msg.metadata.message_type.startswith("query."):
            return inner(msg, context)
        return call_next(msg, context)  # type: ignore[no-any-return]

    def client_fn(context: Context) -> Any:
        return _SecAggClient(open_source(context), context).to_client()

    return ClientApp(client_fn=client_fn, mods=[message_api_queries, secaggplus_mod])


def _secagg_client_base() -> type:
    from flwr.client import NumPyClient

    return NumPyClient  # type: ignore[no-any-return]


class _SecAggClient(_secagg_client_base()):  # type: ignore[misc]
    """Local training as in ``_train``; the weights travel masked (``secaggplus_mod``)."""

    def __init__(self, source: TrainingSource, context: Context) -> None:
        self.source, self.context = source, context

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]
            ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        probe = decode_plan(config.get(PLAN_KEY))
        dp = (probe.get("train") or {}).get("dp") or {}
        sel = self.source.select(probe, self.context.run_id, "train", float(dp.get("epsilon", 0)))
        plan = sel.plan
        x, y = encode(sel.rows, plan.features, decode_scaling(config.get(SCALING_KEY),
                                                              plan.features))
        model = models.build(plan.model, plan.features.width, plan.seed)
        names = list(models.get_state(model))  # the order both ends use (state_dict order)
        models.set_state(model, dict(zip(names, parameters, strict=True)))
        round_ = int(config.get("server-round", 0))
        cfg = TrainConfig(plan.train.epochs, plan.train.lr, plan.train.batch_size, 0.0,
                          plan.train.dp)
        result = train(model, x, y, cfg, seed=plan.seed * 1000 + round_)
        self.source.commit(sel, "train", round_, result.epsilon)
        state = models.get_state(model)
        # Weight 1: no exact customer count leaves the node, and under SecAgg+ the coordinator
        # cannot reweight single updates, so nodes count equally.
        return [state[n] for n in names], 1, {
            SECAGG_LINEAGE_NODE: sel.node,
            SECAGG_LINEAGE_GRANTS: json.dumps(sorted(sel.grant_hashes)),
            "epsilon": result.epsilon}
