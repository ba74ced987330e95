"""The registry beyond one machine: two coordinator processes over one real PostgreSQL
registry (a fresh database), a registration through one visible and routable through the
other, and a node name that moves to a new key only with the old key's signature."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from agent_node.network import CoordinatorClient
from agent_node.requester import ask_network
from consent.identity import Identity
from protos.transport import free_port
from tests.agent_node.conftest import (
    DATASET_TOML,
    bind_all,
    grant_all,
    run_cli,
    serve,
    stop,
    write_sqlite,
)
from tests.coordinator.conftest import (
    coord_cli,
    init_coordinator,
    node_home,
    register,
    serve_coordinator,
    set_node_config,
    stop_process,
)

QUERY = {"dataset": "contacts", "purpose": "marketing-analytics", "measures": ["count"]}


def replica(home: Path, to: Path) -> Path:
    """A second coordinator process of the same network: same identity and TLS, own port."""
    shutil.copytree(home, to)
    path = to / "coordinator.toml"
    config = tomllib.loads(path.read_text())
    config["coordinator"]["listen"] = f"127.0.0.1:{free_port()}"
    path.write_text(tomli_w.dumps(config))
    return to


def ask(client: CoordinatorClient, requester: Identity) -> dict[str, Any]:
    (node,) = client.nodes(dataset="contacts")
    (routed,) = client.fan_out("Query", [(client.client_for(node, requester),
                                          {"query": QUERY})])
    assert routed.outcome == "answered", routed.message
    assert routed.document is not None
    return dict(routed.document["body"]["answer"])


def test_two_coordinators_over_one_postgresql_registry(
        tmp_path: Path, pg_database: str, bank_rows: list[dict[str, Any]]) -> None:
    first = init_coordinator(tmp_path / "coord-a", dsn=pg_database)
    second = replica(first, tmp_path / "coord-b")
    ca = first / "tls" / "ca.pem"
    write_sqlite(tmp_path / "crm.db", bank_rows[:100])
    source = f'[sources.crm]\nkind = "sqlite"\npath = "{tmp_path / "crm.db"}"\n'
    (tmp_path / "holder").mkdir()
    (tmp_path / "intruder").mkdir()
    home, _ = node_home(tmp_path / "holder", source, name="shared", region="eu-west",
                        coordinator_ca=ca)
    intruder_home, _ = node_home(tmp_path / "intruder", source, name="shared",
                                 region="eu-west", coordinator_ca=ca)
    processes = []
    try:
        a, b = serve_coordinator(first), serve_coordinator(second)
        processes += [a.process, b.process]
        run_cli("sov-node", "sync", "--home", str(home))
        wallets = [Identity.generate() for _ in range(8)]  # k = 5 is reached
        bind_all(home, wallets)
        node = serve(home)
        processes.append(node.process)
        requester = Identity.generate()
        grant_all(node, requester, wallets)

        register(home, a)  # through coordinator A ...
        with b.client() as via_b:  # ... listed and routed by coordinator B
            assert [n.did for n in via_b.nodes()] == [node.did]
            assert ask(via_b, requester)["node"] == node.did
        with a.client() as via_a:
            assert ask(via_a, requester)["node"] == node.did

        # The name is held by the node's key: another key is refused, whichever coordinator
        # it asks, even one that rotated its own key (its chain starts elsewhere).
        intruder = serve(intruder_home)
        processes.append(intruder.process)
        refused = register(intruder_home, b, check=False)
        assert refused.returncode == 1
        assert "registered by another key" in refused.stderr
        assert "Traceback" not in refused.stderr
        stop(intruder)
        run_cli("sov-node", "rotate-key", "--home", str(intruder_home))
        intruder = serve(intruder_home)
        processes.append(intruder.process)
        assert register(intruder_home, a, check=False).returncode == 1
        stop(intruder)
        listed = json.loads(coord_cli("nodes", "--home", str(first), "--json").stdout)
        assert [n["did"] for n in listed] == [node.did]

        # The holder rotates its key (signed by the old one): the name moves, and both
        # coordinators route to the node under its new DID.
        stop(node)
        run_cli("sov-node", "rotate-key", "--home", str(home))
        node = serve(home)
        processes.append(node.process)
        assert node.did != listed[0]["did"]
        moved = register(home, b)
        assert "(key rotated)" in moved.stdout
        for coordinator in (a, b):
            with coordinator.client() as client:
                assert [n.did for n in client.nodes()] == [node.did]
                # The answer is sealed and signed under the new key, verified as such.
                assert ask(client, requester)["node"] == node.did
        status = json.loads(coord_cli("status", "--home", str(second), "--json").stdout)
        assert status["registry"] == "postgresql" and status["nodes"] == 1
    finally:
        for process in processes:
            if process.poll() is None:
                stop_process(process)


def test_operator_mistakes_are_one_sentence_and_change_nothing(tmp_path: Path) -> None:
    again = init_coordinator(tmp_path / "coord")
    twice = coord_cli("init", "--home", str(again), check=False)
    assert twice.returncode == 1 and "already holds a coordinator" in twice.stderr
    missing = coord_cli("nodes", "--home", str(tmp_path / "nowhere"), check=False)
    assert missing.returncode == 1 and "is not a coordinator home" in missing.stderr
    bad_dsn = coord_cli("init", "--home", str(tmp_path / "other"), "--registry-dsn",
                        "mysql://x", check=False)
    assert bad_dsn.returncode == 1 and "use a postgresql:// DSN" in bad_dsn.stderr
    assert not (tmp_path / "other").exists()  # refused before anything was written
    down = coord_cli("init", "--home", str(tmp_path / "pg"), "--registry-dsn",
                     "postgresql://postgres@127.0.0.1:1/none", check=False)
    assert down.returncode == 1 and "cannot open the postgresql registry" in down.stderr
    assert not (tmp_path / "pg").exists()
    for result in (twice, missing, bad_dsn, down):
        assert "Traceback" not in result.stderr


def test_a_gm_node_answers_a_gm_requester_through_the_coordinator(
        tmp_path: Path, bank_rows: list[dict[str, Any]]) -> None:
    """The gm profile through the coordinator: the node's SM2 key comes from its SM2-signed
    registration, the session opening travels with its key binding, replies open in the
    session; the coordinator only carries the bytes."""
    home = init_coordinator(tmp_path / "coord")
    rows = bank_rows[:60]
    write_sqlite(tmp_path / "crm.db", rows)
    node_home = tmp_path / "gm" / "node"
    run_cli("sov-node", "init", "--home", str(node_home), "--name", "gm-shop", "--region",
            "cn-east", "--profile", "gm")
    (node_home / "datamap.toml").write_text(
        f'[sources.crm]\nkind = "sqlite"\npath = "{tmp_path / "crm.db"}"\n' + DATASET_TOML)
    set_node_config(node_home, coordinator_listen=f"127.0.0.1:{free_port()}",
                    coordinator_ca=str(home / "tls" / "ca.pem"), privacy="threshold")
    run_cli("sov-node", "sync", "--home", str(node_home))
    wallets = [Identity.generate("gm") for _ in range(6)]
    bind_all(node_home, wallets)
    coordinator = serve_coordinator(home)
    node = serve(node_home)
    try:
        node.wallets = wallets
        requester = Identity.generate("gm")
        grant_all(node, requester, wallets)
        register(node_home, coordinator)
        with coordinator.client() as client:
            (listed,) = client.nodes()
            assert listed.registration.profile == "gm" and listed.registration.sm2_public_key
            query = {"dataset": "contacts", "purpose": "marketing-analytics",
                     "measures": ["count"]}
            first = ask_network(requester, client, query)
            again = ask_network(requester, client, query)  # same session, no SM2 work
        customers = {f"C{i:03d}" for i in range(len(wallets))}
        expected = sum(1 for r in rows if r["customer_id"] in customers)
        for result in (first, again):
            (group,) = result.combined["groups"]
            assert group["values"]["count"] == expected
    finally:
        stop(node)
        stop_process(coordinator.process)
