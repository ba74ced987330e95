"""Training on Flower's deployment engine: a real SuperLink (loopback, TLS, SuperNode
authentication) behind the fleet gateway, real SuperNode processes over real node vaults,
runs submitted with ``flwr run`` and judged with ``flwr ls``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_node import accesslog
from agent_node.flnode import SuperNodeProcess, node_key
from consent.identity import Identity
from coordinator.flower import FlowerError, FlowerLink
from fl.protocol import encode_plan
from protos.tls import create_ca
from protos.transport import free_port
from tests.agent_node.conftest import PASSPHRASE
from tests.fl.conftest import CONSENTING, Node, make_node, signed_plan

FAST = {"node-wait": 20.0, "round-timeout": 90.0, "poll": 0.05}


class Deployment:
    def __init__(self, link: FlowerLink, nodes: list[Node], tmp: Path) -> None:
        self.link, self.nodes, self.tmp = link, nodes, tmp
        self.passphrase = tmp / "passphrase"
        self.passphrase.write_text(PASSPHRASE)
        self.supernodes: list[SuperNodeProcess] = []

    def supernode(self, home: Path) -> SuperNodeProcess:
        proc = SuperNodeProcess(home, self.link.fleet_listen, self.link.ca_path,
                                passphrase_file=self.passphrase, min_customers=10).start()
        self.supernodes.append(proc)
        return proc

    def run(self, plan: dict[str, Any], name: str, **options: Any) -> Any:
        config = {"plan": encode_plan(plan), "min-nodes": 2, "rounds": 1, **FAST, **options}
        return self.link.run(config, self.tmp / name, timeout=600)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]],
               requester: Identity) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("fl-deploy")
    for i in range(3):
        (tmp / f"n{i}").mkdir()
    nodes = [make_node(tmp / f"n{i}", bank_rows[i * 100:] + bank_rows[:i * 100], f"node-{i}",
                       requester) for i in range(3)]
    ca = create_ca("coordinator CA")
    link = FlowerLink(tmp / "link", ca, f"127.0.0.1:{free_port()}").start()
    found = Deployment(link, nodes, tmp)
    try:
        keys = {n.source.node.identity.did: node_key(n.source.node.path)[1] for n in nodes}
        ids = link.sync_nodes(keys)
        assert sorted(ids.values()) == sorted(keys)
        for node in nodes:
            found.supernode(node.source.node.path)
        link.wait_online(3, timeout=60)
        yield found
    finally:
        for proc in found.supernodes:
            proc.stop()
        link.stop()


def training_events(node: Node, plan_id: str) -> list[dict[str, Any]]:
    with node.vault.connection() as conn:
        bodies = [json.loads(b) for (b,) in conn.execute("SELECT body FROM access_log")]
    return [b for b in bodies if b.get("training_run") == plan_id]


def test_a_run_on_real_superlink_and_supernodes(deployment: Deployment,
                                                requester: Identity) -> None:
    plan = signed_plan(requester, dp=1.0, stats_epsilon=0.5)
    result = deployment.run(plan, "run-ok", **{"min-nodes": 3})
    assert result.status == "finished:completed"
    outcome = result.outcome
    assert [r["round"] for r in outcome["rounds"]] == [1]
    assert outcome["rounds"][0]["nodes"] == 3 and not outcome["dropped"]
    assert set(outcome["state"]) == {"0.weight", "0.bias"}
    for node in deployment.nodes:
        did = node.source.node.identity.did
        assert outcome["nodes"][did]  # the grant hashes this node's customers trained under
        events = training_events(node, plan["id"])
        assert [(e["phase"], e["round"]) for e in events] == [("moments", 0), ("train", 1)]
        # Only the consenting customers were read: each event's subject set is theirs.
        with node.vault.connection() as conn:
            sids = sorted(node.sids(node.wallets[:CONSENTING]))
            from agent_node import engine

            refs = engine._subject_refs(conn, sids)
        count, root = accesslog.set_commitment([refs[s] for s in sids])
        assert all(e["subject_count"] == count == CONSENTING and e["subjects_root"] == root
                   for e in events)


def test_the_control_api_is_not_served_at_the_fleet_address(deployment: Deployment) -> None:
    link = deployment.link
    with httpx.Client(verify=str(link.ca_path), timeout=10) as client:
        outside = client.post(f"https://{link.fleet_listen}/v1/control/list-runs", json={})
        inside = client.post(f"https://{link.control}/v1/control/list-runs", json={})
    assert outside.status_code == 404 and "only the Fleet API" in outside.text
    assert inside.status_code != 404  # the loopback SuperLink does serve it
    assert link.control.startswith("127.0.0.1:")


def test_a_node_not_in_the_registry_cannot_join(deployment: Deployment, tmp_path: Path,
                                                 bank_rows: list[dict[str, Any]],
                                                 requester: Identity) -> None:
    stranger = make_node(tmp_path, bank_rows, "stranger", requester)
    proc = deployment.supernode(stranger.source.node.path)
    deadline = time.monotonic() + 60
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not proc.alive(), "the SuperLink admitted a SuperNode whose key is not registered"
    assert "Failed to activate SuperNode" in proc.log.read_text()
    assert len(deployment.link.online()) == 3


def test_a_failed_run_is_reported_as_failed(deployment: Deployment,
                                            requester: Identity) -> None:
    with pytest.raises(FlowerError, match=r"finished:failed: .*fewer than the minimum of 5"):
        deployment.run(signed_plan(requester), "run-too-few",
                       **{"min-nodes": 5, "node-wait": 1.0})


@pytest.mark.long
def test_a_node_killed_mid_run_does_not_hang_it(deployment: Deployment,
                                                 requester: Identity) -> None:
    victim = deployment.supernodes[2]

    def kill_after_round_one(entry: dict[str, Any]) -> None:
        if entry.get("round") == 1:
            victim.kill()

    config = {"plan": encode_plan(signed_plan(requester)), "min-nodes": 2, "rounds": 2,
              **FAST, "round-timeout": 120.0}
    try:
        result = deployment.link.run(config, deployment.tmp / "run-kill", timeout=900,
                                     progress=kill_after_round_one)
        assert [r["nodes"] for r in result.outcome["rounds"]] == [3, 2]
        did = victim_did(deployment, victim)
        node_id = deployment.link.known_nodes()[did]["node_id"]
        why = result.outcome["dropped"][str(node_id)]
        # The SuperLink notices the missing heartbeats, or the phase's bounded wait ends.
        assert "Node Unavailable" in why or "no reply" in why
    finally:
        if not victim.alive():  # the module's other tests expect three nodes
            deployment.supernode(victim.home)


def victim_did(deployment: Deployment, proc: SuperNodeProcess) -> str:
    return next(n.source.node.identity.did for n in deployment.nodes
                if n.source.node.path.resolve() == proc.home)


@pytest.mark.long
def test_a_secagg_run_on_three_supernodes(deployment: Deployment, requester: Identity) -> None:
    plan = signed_plan(requester)
    result = deployment.run(plan, "run-secagg",
                            **{"min-nodes": 3, "secagg": True, "round-timeout": 120.0})
    assert result.status == "finished:completed"
    assert [(r["nodes"], r["secagg"]) for r in result.outcome["rounds"]] == [(3, 1.0)]
    assert set(result.outcome["nodes"]) == {n.source.node.identity.did
                                            for n in deployment.nodes}
    for node in deployment.nodes:
        assert [e["phase"] for e in training_events(node, plan["id"])] == ["moments", "train"]


@pytest.mark.long
def test_a_supervised_supernode_joins_once_its_key_is_registered(
        deployment: Deployment, tmp_path: Path, bank_rows: list[dict[str, Any]],
        requester: Identity) -> None:
    """sov-node serve --fl: the SuperNode is refused until the coordinator registers the
    node's key, and keeps coming back until it is admitted."""
    late = make_node(tmp_path, bank_rows, "late", requester)
    proc = SuperNodeProcess(late.source.node.path, deployment.link.fleet_listen,
                            deployment.link.ca_path, passphrase_file=deployment.passphrase)
    link = deployment.link
    keys = {did: entry["key"] for did, entry in link.known_nodes().items()}
    proc.supervise(retry=1.0)
    try:
        deadline = time.monotonic() + 60
        while proc.restarts < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert proc.restarts >= 1  # refused at least once
        late_did = late.source.node.identity.did
        link.sync_nodes({**keys, late_did: node_key(late.source.node.path)[1]})
        assert len(link.wait_online(4, timeout=90)) == 4
    finally:
        proc.stop()
        link.sync_nodes(keys)  # the module's other tests expect three registered nodes
