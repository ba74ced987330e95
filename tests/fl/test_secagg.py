"""SecAgg+ runs (Flower's legacy SecAggPlusWorkflow / secaggplus_mod) in one process: the
scaling phase through the Message API, then rounds in which the coordinator unmasks only the
sum of the nodes' updates."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from coordinator.training import BoundedGrid, RunOptions, TrainingRunError, run_secagg
from fl import models
from fl.client import make_secagg_client_app
from fl.features import encode
from fl.inprocess import InProcessGrid, MemorySource
from fl.metrics import roc_auc
from fl.protocol import parse_plan
from fl.train import TrainConfig, train
from tests.fl.test_pure import synthetic
from tests.fl.test_server_inprocess import FAST, _memory_grid


def secagg_grid(n: int) -> tuple[InProcessGrid, list[MemorySource]]:
    sources = [MemorySource(synthetic(150, seed=i), f"did:key:zNode{i}") for i in range(n)]
    return InProcessGrid({i + 1: make_secagg_client_app(lambda c, s=s: s)
                          for i, s in enumerate(sources)}), sources


def run(grid: InProcessGrid, plan: dict, **options: object) -> object:
    opts = RunOptions(**{"rounds": 2, "min_nodes": 3, **FAST, **options})  # type: ignore[arg-type]
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    return run_secagg(BoundedGrid(grid, opts), context, plan, opts, lambda entry: None)


def test_a_secagg_run_aggregates_the_sum_of_the_updates() -> None:
    _, plan = _memory_grid(3)
    plan["train"]["epochs"] = 1
    grid, sources = secagg_grid(3)
    outcome = run(grid, plan, rounds=1)
    assert [r["nodes"] for r in outcome.rounds] == [1 * 3] and outcome.rounds[0]["secagg"]
    assert set(outcome.nodes) == {s.node for s in sources}
    # The unmasked aggregate is the mean of what each node trained from the same start
    # (equal weights), up to SecAgg+'s quantisation.
    spec = parse_plan(plan)
    from fl.features import Scaling

    scaling = Scaling(tuple(outcome.scaling["mean"]), tuple(outcome.scaling["std"]))
    locals_ = []
    for source in sources:
        model = models.build(spec.model, spec.features.width, spec.seed)
        x, y = encode(source.rows, spec.features, scaling)
        train(model, x, y, TrainConfig(spec.train.epochs, spec.train.lr,
                                       spec.train.batch_size), seed=spec.seed * 1000 + 1)
        locals_.append(models.get_state(model))
    spread, error = 0.0, 0.0
    for name, value in outcome.state.items():
        stack = np.array([s[name] for s in locals_])
        mean = stack.mean(axis=0)
        spread = max(spread, float(np.abs(stack - mean).max()))
        error = max(error, float(np.abs(value - mean).max()))
        assert np.allclose(value, mean, atol=5e-3), name
    # Each node's own update is far from the mean; the aggregate is on it. Judged over the
    # whole model: SecAgg+ rounds stochastically, and one small tensor (a bias the nodes
    # barely move) can have a spread within a few quantisation steps.
    assert spread > 10 * error, (spread, error)
    x, y = encode(synthetic(300, seed=9), spec.features, scaling)
    model = models.build(spec.model, spec.features.width, spec.seed)
    models.set_state(model, outcome.state)
    assert roc_auc(y, models.predict(model, x)) > 0.75


def test_secagg_needs_three_nodes() -> None:
    _, plan = _memory_grid(2)
    grid, _ = secagg_grid(2)
    with pytest.raises(TrainingRunError, match="at least 3 nodes"):
        run(grid, plan, min_nodes=2)
