"""``sov-coordinator train`` and ``sov-node serve --fl`` as the operators run them: real
processes only. A coordinator hosting the ledger (``sov-coordinator serve``), two nodes
registered with it (``sov-node register``) serving with ``--fl``, and a third node serving with
``--fl`` that never registered. Each run starts the coordinator's SuperLink and fleet gateway
and stops them when it ends; the nodes' SuperNodes come and go with ``sov-node serve``."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consent.did import resolve
from consent.integrity import sign_document
from coordinator.home import open_home
from coordinator.models import ModelRegistry, metrics_digest
from ledger.authority import signing_input
from ledger.events import encode_event
from protos.transport import free_port
from tests.agent_node.conftest import BIN, PASSPHRASE
from tests.coordinator.conftest import (
    CoordinatorProcess,
    env,
    init_coordinator,
    register,
    serve_coordinator,
    set_node_config,
    stop_process,
)
from tests.fl.conftest import make_node, signed_plan

pytestmark = [pytest.mark.long, pytest.mark.timeout(1200)]


@dataclass
class Served:
    home: Path
    did: str
    process: subprocess.Popen[bytes]


@dataclass
class Network:
    coordinator: CoordinatorProcess
    did: str  # the coordinator's
    fleet: str
    members: list[Served]  # registered with the coordinator
    stranger: Served  # serves with --fl, never registered
    tmp: Path


def serve_fl(home: Path, fleet: str) -> subprocess.Popen[bytes]:
    port_file = home / f"port-{uuid.uuid4().hex}"
    log = (home / "serve.log").open("ab")
    process = subprocess.Popen(
        [str(BIN / "sov-node"), "serve", "--home", str(home), "--listen", "127.0.0.1:0",
         "--port-file", str(port_file), "--fl", fleet, "--fl-min-customers", "10"],
        env=env(), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"sov-node serve --fl did not start: {home / 'serve.log'}")
        time.sleep(0.1)
    return process


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]],
            requester: Any) -> Iterator[Network]:
    tmp = tmp_path_factory.mktemp("fl-cli")
    coordinator_home = init_coordinator(tmp / "coordinator", host_ledger=True,
                                         health_interval_seconds=0.5)
    coordinator = serve_coordinator(coordinator_home)
    ca = coordinator_home / "tls" / "ca.pem"
    fleet = f"127.0.0.1:{free_port()}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        served = []
        for i, name in enumerate(("shop-a", "shop-b", "stranger")):
            (tmp / name).mkdir()
            node = make_node(tmp / name, bank_rows[i * 100:] + bank_rows[:i * 100], name,
                             requester)
            home = node.source.node.path
            set_node_config(home, coordinator_listen=f"127.0.0.1:{free_port()}",
                            coordinator_ca=str(ca))
            process = serve_fl(home, fleet)
            processes.append(process)
            served.append(Served(home, node.source.node.identity.did, process))
        for member in served[:2]:
            register(member.home, coordinator)
        did = open_home(coordinator_home).identity(PASSPHRASE).did
        yield Network(coordinator, did, fleet, served[:2], served[2], tmp)
    finally:
        slow = []
        for process in [*processes, coordinator.process]:  # every one, even after a failure
            try:
                if process.poll() is None:
                    stop_process(process)
            except AssertionError as exc:
                slow.append(str(exc))
        assert not slow, slow


def assert_stopped(address: str) -> None:
    """Nothing listens on the fleet address once ``train`` has exited: it stopped its
    SuperLink and fleet gateway."""
    host, _, port = address.rpartition(":")
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect((host, int(port)))


def train(network: Network, plan: dict[str, Any], *args: str
          ) -> subprocess.CompletedProcess[str]:
    plan_file = network.tmp / f"plan-{uuid.uuid4().hex}.json"
    plan_file.write_text(json.dumps(plan))
    return subprocess.run(
        [str(BIN / "sov-coordinator"), "train", "--home", str(network.coordinator.home),
         "--plan", str(plan_file), "--fleet-listen", network.fleet, "--rounds", "1",
         "--min-nodes", "2", "--node-wait", "90", "--round-timeout", "300", *args],
        capture_output=True, text=True, env=env(), timeout=1000, check=False)


def test_a_failed_run_exits_non_zero_with_the_reason(network: Network,
                                                     requester: Any) -> None:
    """Every node refuses the plan (its features are not the nodes' declaration): the
    ServerApp fails, ``flwr run`` would still exit 0, ``sov-coordinator train`` does not."""
    plan = signed_plan(requester)
    plan["features"]["numeric"] = []  # the nodes declare "age" too
    del plan["proof"]
    plan = sign_document(plan, requester)
    result = train(network, plan)
    assert result.returncode == 1, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "training run" in message and "finished:failed" in message, result.stderr
    assert "features differ from this node's declaration" in message
    assert "Traceback" not in result.stderr
    assert ModelRegistry(network.coordinator.home / "models.sqlite").models() == []
    assert_stopped(network.fleet)


def test_a_run_registers_the_model_with_a_signed_ledger_entry(network: Network,
                                                              requester: Any) -> None:
    plan = signed_plan(requester, dp=1.0, stats_epsilon=0.5)
    result = train(network, plan, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout)
    members = sorted(m.did for m in network.members)
    assert found["nodes"] == members  # the registered nodes, and only they
    assert [r["round"] for r in found["rounds"]] == [1]
    digest = found["model"]
    assert Path(found["artifact"]).name == f"{digest}.json" and Path(found["curve"]).exists()

    listed = json.loads(subprocess.run(
        [str(BIN / "sov-coordinator"), "models", "--home", str(network.coordinator.home),
         "--json"], capture_output=True, text=True, env=env(), timeout=60,
        check=True).stdout)
    model = next(m for m in listed if m["digest"] == digest)
    assert model["plan_id"] == plan["id"] and sorted(model["nodes"]) == members

    # The ledger entry: a 'model' event the coordinator signed, naming this model.
    receipt = found["receipt"]
    assert receipt is not None and model["receipt"]["index"] == receipt["index"]
    entry = receipt["entry"]
    assert entry["type"] == "model" and entry["author"] == network.did
    assert entry["model_digest"] == digest and entry["nodes"] == members
    assert entry["metrics_digest"] == metrics_digest(found["rounds"])
    assert entry["grant_digests"]
    key = resolve(network.did).ed25519
    assert key is not None
    key.verify(signing_input(entry), bytes.fromhex(entry["signature"]))
    assert encode_event(entry)  # a well-formed ledger event
    assert_stopped(network.fleet)


def test_a_node_not_in_the_registry_cannot_join(network: Network) -> None:
    """The stranger's ``sov-node serve --fl`` ran through both runs: its SuperNode was
    refused at activation every time it reached the SuperLink, and it trained on nobody."""
    log = network.stranger.home / "flower" / "supernode.log"
    assert "Failed to activate SuperNode" in log.read_text()
    assert network.stranger.process.poll() is None  # the node itself keeps serving
    registry = ModelRegistry(network.coordinator.home / "models.sqlite")
    assert all(network.stranger.did not in m["nodes"] for m in registry.models())
