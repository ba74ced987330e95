"""Fixtures for the coordinator tests: a real ``sov-coordinator serve`` process and real
``sov-node serve`` processes over different sources (SQLite, CSV, PostgreSQL), each with its
mutual-TLS coordinator port, registered with the real ``sov-node register``."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import tomli_w

from agent_node.home import load_home
from agent_node.network import CoordinatorClient
from consent.identity import Identity
from protos.transport import free_port
from tests.agent_node.conftest import (
    BIN,
    PASSPHRASE,
    SUBJECTS,
    NodeProcess,
    bank_rows,  # noqa: F401 (a fixture used here)
    bind_all,
    grant_all,
    make_home,
    run_cli,
    serve,
    stop,
)
from tests.agent_node.test_e2e import _csv_source, _postgres_source, _sqlite_source

ROWS_PER_NODE = 100
PG_ADMIN = "host=127.0.0.1 user=postgres dbname=postgres"


def env() -> dict[str, str]:
    return {**os.environ, "SOV_NODE_PASSPHRASE": PASSPHRASE,
            "SOV_COORDINATOR_PASSPHRASE": PASSPHRASE, "SOV_QUERY_PASSPHRASE": PASSPHRASE}


def coord_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(BIN / "sov-coordinator"), *args], capture_output=True,
                            text=True, env=env(), timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"sov-coordinator {args[:1]} failed: {result.stderr}")
    return result


@dataclass
class CoordinatorProcess:
    home: Path
    address: str
    ca_pem: bytes
    process: subprocess.Popen[bytes]

    def client(self, **kwargs: Any) -> CoordinatorClient:
        return CoordinatorClient(self.address, self.ca_pem, **kwargs)


def init_coordinator(home: Path, *, dsn: str = "", host_ledger: bool = False,
                     **settings: Any) -> Path:
    args = ["init", "--home", str(home), "--listen", f"127.0.0.1:{free_port()}"]
    if dsn:
        args += ["--registry-dsn", dsn]
    if host_ledger:
        args.append("--host-ledger")
    coord_cli(*args)
    if settings:
        path = home / "coordinator.toml"
        config = tomllib.loads(path.read_text())
        config["coordinator"].update(settings)
        path.write_text(tomli_w.dumps(config))
    return home


def serve_coordinator(home: Path) -> CoordinatorProcess:
    port_file = home / f"port-{uuid.uuid4().hex}"
    process = subprocess.Popen(
        [str(BIN / "sov-coordinator"), "serve", "--home", str(home), "--port-file",
         str(port_file)], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("sov-coordinator serve did not start")
            time.sleep(0.05)
        return CoordinatorProcess(home, f"127.0.0.1:{port_file.read_text()}",
                                  (home / "tls" / "ca.pem").read_bytes(), process)
    except BaseException:
        process.kill()
        process.wait()
        raise


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError("a server did not stop within 10 s of SIGTERM") from None


def set_node_config(home: Path, **settings: Any) -> None:
    path = home / "node.toml"
    config = tomllib.loads(path.read_text())
    config.setdefault("node", {}).update(settings)
    path.write_text(tomli_w.dumps(config))


@dataclass
class NetNode:
    """A served node joined to the coordinator; ``wallets`` are its bound customers."""

    kind: str
    node: NodeProcess
    name: str
    region: str
    coordinator_port: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def did(self) -> str:
        return self.node.did


def node_home(tmp: Path, source_toml: str, *, name: str, region: str,
              coordinator_ca: Path) -> tuple[Path, int]:
    home = make_home(tmp, source_toml)
    port = free_port()
    # k-threshold mode (exact aggregates, the operator's labelled choice), so that routed and
    # direct answers and their combination can be compared exactly.
    set_node_config(home, name=name, region=region, coordinator_listen=f"127.0.0.1:{port}",
                    coordinator_ca=str(coordinator_ca), privacy="threshold")
    return home, port


def node_did(home: Path) -> str:
    return load_home(home, PASSPHRASE).identity.did


def register(home: Path, coordinator: CoordinatorProcess, *extra: str,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli("sov-node", "register", "--home", str(home), "--coordinator",
                   coordinator.address, "--coordinator-ca",
                   str(coordinator.home / "tls" / "ca.pem"), *extra, check=check)


SOURCE_KINDS = {"sqlite": _sqlite_source, "csv": _csv_source, "postgresql": _postgres_source}
REGIONS = {"sqlite": "eu-west", "csv": "eu-central", "postgresql": "ap-east"}


@dataclass
class Network:
    coordinator: CoordinatorProcess
    nodes: list[NetNode]
    requester: Identity

    def by_kind(self, kind: str) -> NetNode:
        return next(n for n in self.nodes if n.kind == kind)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory,
            bank_rows: list[dict[str, Any]]) -> Iterator[Network]:  # noqa: F811
    """A coordinator (SQLite registry, 0.3 s health checks, hosting the ledger) and three
    registered nodes over SQLite, CSV and PostgreSQL sources, each holding its own 100
    contacts and 50 customers who all granted one requester ``marketing-analytics`` on
    ``transaction``. The SQLite node anchors its access-log heads in the hosted ledger."""
    tmp = tmp_path_factory.mktemp("network")
    coordinator_home = init_coordinator(
        tmp / "coordinator", host_ledger=True, max_fanout=4, health_interval_seconds=0.3,
        relay_retry_seconds=0.3, metrics_port=free_port())
    coordinator = serve_coordinator(coordinator_home)
    requester = Identity.generate()
    sources, nodes = [], []
    network: Network | None = None
    try:
        for i, (kind, make_source) in enumerate(SOURCE_KINDS.items()):
            rows = bank_rows[i * ROWS_PER_NODE:(i + 1) * ROWS_PER_NODE]
            folder = tmp / kind
            folder.mkdir()
            source = make_source(folder, rows)
            sources.append(source)
            home, port = node_home(folder, next(source), name=f"node-{kind}",
                                   region=REGIONS[kind],
                                   coordinator_ca=coordinator.home / "tls" / "ca.pem")
            run_cli("sov-node", "sync", "--home", str(home))
            if kind == "sqlite":
                set_node_config(home, ledger_address=coordinator.address,
                                ledger_ca=str(coordinator_home / "tls" / "ca.pem"))
                run_cli("sov-ledger", "authors", "add", "--home",
                        str(coordinator_home / "ledger"), node_did(home), "--name",
                        f"node-{kind}", "--role", "node")
            wallets = [Identity.generate() for _ in range(SUBJECTS)]
            bind_all(home, wallets)
            served = serve(home)
            served.wallets = wallets
            nodes.append(NetNode(kind, served, f"node-{kind}", REGIONS[kind], port, rows))
            register(home, coordinator)
            grant_all(served, requester, wallets)
        network = Network(coordinator, nodes, requester)
        yield network
    finally:
        # Every process is stopped even when one fails to stop in time (a failure is raised
        # afterwards), and the coordinator a test restarted (network.coordinator) too: a CI
        # run once left that one serving.
        steps = [functools.partial(stop, n.node) for n in nodes if n.node.process.poll() is None]
        current = network.coordinator if network is not None else coordinator
        served = [coordinator] if current is coordinator else [coordinator, current]
        steps += [functools.partial(stop_process, c.process) for c in served
                  if c.process.poll() is None]
        steps += [source.close for source in sources]
        failures = []
        for step in steps:
            try:
                step()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards); its DSN as a URL."""
    name = f"sov_coord_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class WalletNetwork:
    """A coordinator, a node registered with it, and a wallet the node has bound."""

    coordinator: CoordinatorProcess
    coordinator_ca: Path
    node: Any  # tests.wallet.conftest.NodeProcess
    wallet: Any  # tests.wallet.wallet_helpers.WalletCLI


@contextmanager
def wallet_network(tmp_path: Path) -> Iterator[WalletNetwork]:
    """The relay tests' network (fast health checks and relay retries), stopped after use,
    whatever the test did to it. The caller sets CONSENT_WALLET_PASSPHRASE."""
    from tests.wallet.conftest import NodeProcess, _sov_node
    from tests.wallet.wallet_helpers import WalletCLI

    coordinator = serve_coordinator(init_coordinator(
        tmp_path / "coordinator", health_interval_seconds=0.3, relay_retry_seconds=0.3))
    coordinator_ca = coordinator.home / "tls" / "ca.pem"
    node = NodeProcess(tmp_path)
    try:
        set_node_config(node.home, coordinator_listen=f"127.0.0.1:{free_port()}",
                        coordinator_ca=str(coordinator_ca))
        node.start()
        _sov_node("register", "--home", str(node.home), "--coordinator", coordinator.address,
                  "--coordinator-ca", str(coordinator_ca))
        wallet = WalletCLI(tmp_path / "wallet")
        wallet.ok("init")
        node.bind(json.loads(wallet.ok("whoami", "--json").output)["did"])
        wallet.ok("nodes", "add", node.address, "--ca", str(node.ca_path))
        yield WalletNetwork(coordinator, coordinator_ca, node, wallet)
    finally:
        node.stop()
        stop_process(coordinator.process)
