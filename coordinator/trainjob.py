"""``sov-coordinator train`` end to end: deployment, run, model registry, ledger entry.

1. The SuperNode keys of the registered nodes (``flower_key`` of their signed registrations)
   are made the SuperLink's (``coordinator.flower.FlowerLink.sync_nodes``); the SuperLink runs
   on loopback behind the fleet gateway at ``fleet_listen``.
2. The requester's signed run plan is submitted with ``flwr run``; progress comes back per
   round; the outcome is judged by ``flwr ls``.
3. The model becomes an artifact (``fl.artifact``) under ``HOME/models/DIGEST.json`` with its
   training curve ``DIGEST.png``; registry and lineage go into ``coordinator.models``.
4. The ``model`` ledger entry (digest, run, metrics digest, nodes, grant digests) is signed by
   the coordinator and appended through the ledger service (the coordinator's own when it hosts
   the ledger); its receipt is stored with the model and written beside it as
   ``DIGEST.receipt.json``, which nodes install the model with (``sov-node models install``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consent.identity import Identity
from coordinator.flower import FlowerLink, registry_keys
from coordinator.home import CoordinatorHome
from coordinator.models import ModelRegistry, model_event, training_curve
from coordinator.registry import Registry
from fl import artifact as artifacts
from fl.protocol import encode_plan, parse_plan
from ledger.authority import sign_entry
from protos.tls import TLSMaterial


@dataclass(frozen=True)
class TrainedModel:
    digest: str
    run_id: int
    rounds: list[dict[str, Any]]
    nodes: dict[str, list[str]]
    artifact: Path
    curve: Path
    receipt: dict[str, Any] | None


def train(home: CoordinatorHome, identity: Identity, plan: dict[str, Any],
          options: dict[str, Any], *, fleet_listen: str,
          progress: Callable[[dict[str, Any]], None] | None = None,
          ledger: Any = None, timeout: float = 3600.0) -> TrainedModel:
    """Run ``plan`` (signed by its requester) across the registered nodes; ``options`` are
    run config keys (``fl.deploy.RUN_CONFIG``); ``ledger`` a ``ledger.client.LedgerClient``."""
    parse_plan(plan)  # refuse a malformed or expired plan before starting anything
    registry = Registry(home.registry_target)
    try:
        keys = registry_keys(registry.nodes())
    finally:
        registry.close()
    ca = TLSMaterial(home.ca_pem(), (home.tls_dir / "ca.key").read_bytes())
    out = home.path / "models"
    out.mkdir(exist_ok=True)
    with FlowerLink(home.path / "flower", ca, fleet_listen) as link:
        link.sync_nodes(keys)
        link.wait_online(int(options.get("min-nodes", 2)),
                         float(options.get("node-wait", 60.0)))
        result = link.run({**options, "plan": encode_plan(plan)},
                          out / "runs" / str(plan["id"]).rsplit(":", 1)[-1],
                          progress=progress, timeout=timeout)
    return register(home, identity, plan, result.run_id, result.outcome, ledger=ledger)


def register(home: CoordinatorHome, identity: Identity, plan: dict[str, Any], run_id: int,
             outcome: dict[str, Any], *, ledger: Any = None) -> TrainedModel:
    """The run's model into the registry (and the ledger, when a client is given)."""
    out = home.path / "models"
    out.mkdir(exist_ok=True)
    artifact = artifacts.make_artifact(plan, run_id, outcome["state"], outcome["scaling"])
    digest = artifacts.digest(artifact)
    artifact_path = out / f"{digest}.json"
    artifacts.save(artifact, artifact_path)
    rounds, nodes = list(outcome["rounds"]), dict(outcome["nodes"])
    curve = training_curve(rounds, out / f"{digest}.png", f"run {run_id}")
    models = ModelRegistry(home.path / "models.sqlite")
    models.record(digest, str(run_id), plan, rounds, nodes, artifact_path, curve)
    receipt = None
    if ledger is not None:
        entry = sign_entry(model_event(digest, str(run_id), rounds, nodes), identity)
        appended = ledger.append(entry)
        receipt = appended.to_json()
        models.set_receipt(digest, json.dumps(receipt))
        # Beside the artifact: what a node operator installs it with (sov-node models install).
        (out / f"{digest}.receipt.json").write_text(appended.dumps(), encoding="utf-8")
    return TrainedModel(digest, run_id, rounds, nodes, artifact_path, curve, receipt)
