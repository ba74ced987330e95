"""The coordinator's bounded strategy (coordinator.training) over in-memory ClientApps
(fl.inprocess): FedAvg and FedProx, a node dying mid-run, too few nodes."""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.training import RunOptions, TrainingRunError, run_training
from fl.inprocess import InProcessGrid, memory_app
from tests.fl.test_pure import BOUNDS, RAW, synthetic

FAST = {"round_timeout": 2.0, "node_wait": 0.5, "poll": 0.01}


def _memory_grid(n: int) -> tuple[InProcessGrid, dict[str, Any]]:
    from fl.features import parse_features
    from fl.models import ModelSpec
    from fl.protocol import plan_document
    from fl.train import TrainConfig

    spec = parse_features("f", RAW, BOUNDS)
    plan = plan_document("urn:uuid:m", "did:key:z", "t", spec, ModelSpec("logreg"),
                         TrainConfig(epochs=1, lr=0.3), stats_epsilon=1.0)
    return InProcessGrid({i + 1: memory_app(synthetic(150, seed=i))[0] for i in range(n)}), plan


def test_a_node_dying_mid_run_does_not_hang_it() -> None:
    grid, plan = _memory_grid(3)

    def kill_after_first_round(entry: dict[str, Any]) -> None:
        if entry.get("round") == 1:
            grid.kill(3)

    outcome = run_training(grid, plan, RunOptions(rounds=3, min_nodes=2, **FAST),
                           progress=kill_after_first_round)
    assert [r["nodes"] for r in outcome.rounds] == [3, 2, 2]
    assert "no reply" in outcome.dropped[3]
    # Too few left: the run fails, after bounded waits, instead of waiting forever.
    grid, plan = _memory_grid(2)
    grid.kill(2)
    with pytest.raises(TrainingRunError, match="fewer than the minimum"):
        run_training(grid, plan, RunOptions(rounds=2, min_nodes=2, **FAST))


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox"])
def test_strategies_learn_and_report_per_round_metrics(strategy: str) -> None:
    grid, plan = _memory_grid(3)
    outcome = run_training(grid, plan, RunOptions(strategy=strategy, rounds=2, min_nodes=3,
                                                  evaluate=True, **FAST))
    assert [r["round"] for r in outcome.rounds] == [1, 2]
    assert outcome.rounds[-1]["auc"] > 0.8
    assert len(outcome.scaling["mean"]) == 2 and not outcome.dropped
    handled = {t for _, t in grid.handled}
    assert handled == {"query.moments", "train", "evaluate"}


def test_no_exact_count_leaves_a_node() -> None:
    """Nodes send num-examples = 1; the coordinator weights them by the Laplace-noised counts
    they released in the scaling phase."""
    grid, plan = _memory_grid(3)
    outcome = run_training(grid, plan, RunOptions(rounds=1, min_nodes=3, evaluate=True, **FAST))
    sent = {(node, kind): metrics for node, kind, metrics in grid.sent_metrics}
    noisy = {n: float(sent[(n, "query.moments")]["count"]) for n in (1, 2, 3)}
    assert all(sent[(n, t)]["num-examples"] == 1 for n in (1, 2, 3)
               for t in ("train", "evaluate"))
    assert outcome.weights == {n: max(1.0, c) for n, c in noisy.items()}
    assert outcome.rounds[0]["examples"] == round(sum(outcome.weights.values()))
    assert outcome.weights != {1: 150.0, 2: 150.0, 3: 150.0}
