"""A trained model into the coordinator's registry and its ledger (coordinator.trainjob,
coordinator.models): artifact digest, lineage, training curve, and the coordinator-signed
``model`` entry appended to the ledger the coordinator hosts (a real served ledger)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consent.identity import Identity
from coordinator.home import open_home
from coordinator.models import ModelRegistry, metrics_digest
from coordinator.training import RunOptions, run_training
from coordinator.trainjob import register
from fl import artifact as artifacts
from ledger.client import LedgerClient
from tests.agent_node.conftest import PASSPHRASE
from tests.coordinator.conftest import init_coordinator, serve_coordinator, stop_process
from tests.fl.conftest import Node, signed_plan
from tests.fl.test_training_inprocess import FAST, grid_of


def test_a_model_is_registered_with_its_lineage_and_a_signed_ledger_entry(
        tmp_path: Path, nodes: list[Node], requester: Identity) -> None:
    plan = signed_plan(requester, dp=1.0)
    outcome = run_training(grid_of([n.source for n in nodes], run_id=41), plan,
                           RunOptions(rounds=2, min_nodes=3, **FAST)).to_json()
    home = open_home(init_coordinator(tmp_path / "coord", host_ledger=True))
    identity = home.identity(PASSPHRASE)
    served = serve_coordinator(home.path)
    try:
        with LedgerClient(served.address, served.ca_pem) as ledger:
            model = register(home, identity, plan, 41, outcome, ledger=ledger)
    finally:
        stop_process(served.process)
    # The artifact's digest is what a node recomputes before scoring with it.
    assert artifacts.digest(artifacts.load(model.artifact)) == model.digest
    assert model.curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    entry: dict[str, Any] = model.receipt["entry"] if model.receipt else {}
    assert entry["type"] == "model" and entry["author"] == identity.did
    assert entry["model_digest"] == model.digest and entry["run_id"] == "41"
    assert entry["metrics_digest"] == metrics_digest(outcome["rounds"])
    lineage = {g for grants in outcome["nodes"].values() for g in grants}
    assert set(entry["grant_digests"]) == lineage and len(lineage) == 3 * 40
    assert entry["nodes"] == sorted(n.source.node.identity.did for n in nodes)
    # The registry answers which models a customer's grant fed.
    registry = ModelRegistry(home.path / "models.sqlite")
    one = sorted(lineage)[0]
    assert registry.contributed([one]) == [model.digest]
    assert registry.contributed(["0" * 64]) == []
    [listed] = registry.models()
    assert listed["receipt"]["index"] == model.receipt["index"]
    assert sum(listed["nodes"].values()) == len(lineage)
