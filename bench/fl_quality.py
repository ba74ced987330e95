"""Model quality of federated intent training (issue 14, Evaluation on real data).

The bank-marketing table (``../shared/datasets/bank_marketing``, ``duration`` dropped: it is
only known after the call and leaks the target) is split into a stratified held-out test set
(20 %) and a training set spread over 5 nodes **non-IID by job** (each node holds whole job
groups). The same logistic regression is trained

- centrally on the union of the training set (scaled with exact statistics), and
- federated with FedAvg through ``coordinator.training.run_training`` over 5 in-process
  ClientApps (``fl.inprocess``; scaling statistics from the nodes' DP moments),

and both are scored by ROC-AUC on the same held-out set (target: federated within 0.01 of
centralised, without DP-SGD). Then the federated run is repeated with DP-SGD per customer at
total epsilons 0.5, 1, 2 and 8 per customer (10 % spent on the scaling statistics, the rest
split evenly over the rounds, basic composition, as the nodes debit it; delta 1e-5 per round).
Per-round epsilon cannot go below about 0.2 at that delta (the RDP accountant's floor), so the
DP runs are few rounds of several local epochs each (the accountant composes a round's epochs
tightly); the same schedule without DP is in the table too, so the cost of privacy is read
against it. Clipping at norm 3 (a customer's gradient norm is about that of its one-hot and
scaled inputs): at norm 1 the clipping bias, not the noise, dominated every epsilon. Prints
one line per result and ends with one JSON object holding the table. ``--quick`` uses a
12,000-row sample, fewer rounds and epochs.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.training import RunOptions, run_training  # noqa: E402
from fl import models  # noqa: E402
from fl.features import Scaling, encode, parse_features  # noqa: E402
from fl.inprocess import InProcessGrid, memory_app  # noqa: E402
from fl.metrics import roc_auc  # noqa: E402
from fl.protocol import plan_document  # noqa: E402
from fl.train import DPConfig, TrainConfig, evaluate, train  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "bank_marketing" / "bank-additional-full.csv"
CATEGORICAL = ("job", "marital", "education", "default", "housing", "loan", "contact", "month",
               "day_of_week", "poutcome")
NUMERIC = {"age": (17, 98), "campaign": (1, 56), "pdays": (0, 999), "previous": (0, 7),
           "emp_var_rate": (-3.4, 1.4), "cons_price_idx": (92.2, 94.8),
           "cons_conf_idx": (-50.8, -26.9), "euribor3m": (0.6, 5.1),
           "nr_employed": (4963.6, 5228.1)}
#: Non-IID split: each node holds whole job groups.
NODES_BY_JOB = (("admin.", "unknown"), ("blue-collar", "housemaid"),
                ("technician", "unemployed", "student"), ("services", "retired", "self-employed"),
                ("management", "entrepreneur"))

#: Total epsilon per customer of the DP runs; per-round gradient clipping norm.
EPSILONS = (0.5, 1.0, 2.0, 8.0)
CLIP = 3.0


def load(sample: int | None, seed: int) -> list[dict[str, Any]]:
    with DATA.open(newline="") as handle:
        rows = [{k.replace(".", "_"): v for k, v in row.items() if k != "duration"}
                for row in csv.DictReader(handle, delimiter=";")]
    random.Random(seed).shuffle(rows)
    return rows[:sample] if sample else rows


def spec_for(rows: list[dict[str, Any]]) -> Any:
    raw = {"target": {"column": "y", "positive": "yes"},
           "categorical": {c: sorted({r[c] for r in rows}) for c in CATEGORICAL},
           "numeric": list(NUMERIC)}
    bounds: dict[str, Any] = {"y": None, **{c: None for c in CATEGORICAL},
                              **{c: (float(lo), float(hi)) for c, (lo, hi) in NUMERIC.items()}}
    return parse_features("bench.features", raw, bounds)


def split(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Stratified 80/20 split (rows are already shuffled)."""
    train_rows, test_rows = [], []
    for label in ("yes", "no"):
        group = [r for r in rows if r["y"] == label]
        cut = len(group) // 5
        test_rows += group[:cut]
        train_rows += group[cut:]
    return train_rows, test_rows


def exact_scaling(rows: list[dict[str, Any]], spec: Any) -> Scaling:
    values = np.array([[min(max(float(r[c]), lo), hi) for c, lo, hi in spec.numeric]
                       for r in rows])
    return Scaling(tuple(values.mean(0)), tuple(np.maximum(values.std(0), 1e-3)))


def centralised(rows: list[dict[str, Any]], test: list[dict[str, Any]], spec: Any,
                config: TrainConfig, seed: int) -> float:
    scaling = exact_scaling(rows, spec)
    x, y = encode(rows, spec, scaling)
    xt, yt = encode(test, spec, scaling)
    model = models.build(models.ModelSpec("logreg"), spec.width, seed)
    train(model, x, y, config, seed=seed)
    return float(evaluate(model, xt, yt).auc or 0.5)


def federated(parts: list[list[dict[str, Any]]], test: list[dict[str, Any]], spec: Any,
              config: TrainConfig, rounds: int, stats_epsilon: float, seed: int) -> float:
    plan = plan_document("urn:uuid:bench", "did:key:bench", "bank", spec,
                         models.ModelSpec("logreg"), config, stats_epsilon=stats_epsilon,
                         seed=seed)
    grid = InProcessGrid({i + 1: memory_app(p, f"node-{i}")[0] for i, p in enumerate(parts)})
    outcome = run_training(grid, plan, RunOptions(rounds=rounds, min_nodes=len(parts),
                                                  poll=0.001))
    scaling = Scaling(tuple(outcome.scaling["mean"]), tuple(outcome.scaling["std"]))
    model = models.build(models.ModelSpec("logreg"), spec.width, seed)
    models.set_state(model, outcome.state)
    xt, yt = encode(test, spec, scaling)
    return float(roc_auc(yt, models.predict(model, xt)) or 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12,000 rows, fewer rounds")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    rows = load(12_000 if args.quick else None, args.seed)
    spec = spec_for(rows)
    train_rows, test_rows = split(rows)
    parts = [[r for r in train_rows if r["job"] in jobs] for jobs in NODES_BY_JOB]
    rounds = 6 if args.quick else 15
    plain = TrainConfig(epochs=1, lr=0.1, batch_size=64)
    started = time.perf_counter()
    central = centralised(train_rows, test_rows, spec,
                          TrainConfig(epochs=rounds, lr=0.1, batch_size=64), args.seed)
    print(f"centralised logreg, {rounds} epochs: AUC {central:.4f}", flush=True)
    fed = federated(parts, test_rows, spec, plain, rounds, 1.0, args.seed)
    print(f"federated FedAvg, 5 nodes by job, {rounds} rounds: AUC {fed:.4f} "
          f"(gap {central - fed:+.4f})", flush=True)
    table: list[dict[str, Any]] = [
        {"setting": f"centralised, {rounds} epochs", "epsilon": None, "auc": central},
        {"setting": f"federated FedAvg, {rounds} rounds", "epsilon": None, "auc": fed}]
    dp_rounds, dp_epochs = (2, 2) if args.quick else (2, 5)
    schedule = f"{dp_rounds} rounds x {dp_epochs} epochs"
    dp_plain = TrainConfig(epochs=dp_epochs, lr=0.2, batch_size=128)
    auc = federated(parts, test_rows, spec, dp_plain, dp_rounds, 1.0, args.seed)
    print(f"federated FedAvg, {schedule}, no DP: AUC {auc:.4f}", flush=True)
    table.append({"setting": f"federated, {schedule}", "epsilon": None, "auc": auc})
    for epsilon in EPSILONS:
        per_round = 0.9 * epsilon / dp_rounds
        config = TrainConfig(epochs=dp_epochs, lr=0.2, batch_size=128,
                             dp=DPConfig(per_round, 1e-5, CLIP))
        auc = federated(parts, test_rows, spec, config, dp_rounds, 0.1 * epsilon, args.seed)
        print(f"federated + DP-SGD, {schedule}, epsilon {epsilon:g} per customer: "
              f"AUC {auc:.4f}", flush=True)
        table.append({"setting": f"federated + DP-SGD, {schedule}", "epsilon": epsilon,
                      "auc": auc})
    print(json.dumps({
        "bench": "fl_quality", "quick": args.quick, "rows": len(rows),
        "train_rows": len(train_rows), "test_rows": len(test_rows), "nodes": len(parts),
        "split": "non-IID by job", "rounds": rounds, "dp_rounds": dp_rounds,
        "dp_epochs": dp_epochs, "clip": CLIP, "model": "logreg",
        "federated_gap": round(central - fed, 4), "target_gap": 0.01,
        "table": [{**t, "auc": round(t["auc"], 4)} for t in table],
        "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
