"""Fixtures for the agent node tests: bank-marketing rows loaded into real sources, a node
home made with the real CLI, and the node served as a real ``sov-node serve`` process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_node.client import NodeClient
from agent_node.engine import EngineSettings, QueryEngine
from agent_node.grantstore import GrantStore
from agent_node.home import NodeHome, init_home, load_home
from agent_node.vault import Vault, sync
from consent.grants import issue_grant
from consent.identity import Identity

PASSPHRASE = "correct horse battery staple"
ROWS = 300
SUBJECTS = 50
BIN = Path(sys.executable).parent
COLUMNS = ("customer_id", "contact_id", "age", "job", "duration", "education", "y")


def env() -> dict[str, str]:
    return {**os.environ, "SOV_NODE_PASSPHRASE": PASSPHRASE, "SOV_QUERY_PASSPHRASE": PASSPHRASE}


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                            env=env(), timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{args[:2]} failed: {result.stderr}")
    return result


@pytest.fixture(scope="session")
def bank_rows(shared_dir: Path) -> list[dict[str, Any]]:
    """The first ROWS bank-marketing contacts, each given one of SUBJECTS customer ids."""
    path = shared_dir / "datasets" / "bank_marketing" / "bank-additional-full.csv"
    rows = []
    with path.open(newline="") as handle:
        for i, raw in enumerate(csv.DictReader(handle, delimiter=";")):
            if i == ROWS:
                break
            rows.append({"customer_id": f"C{i % SUBJECTS:03d}", "contact_id": i,
                         "age": int(raw["age"]), "job": raw["job"],
                         "duration": int(raw["duration"]), "education": raw["education"],
                         "y": raw["y"]})
    return rows


DATASET_TOML = """
[datasets.contacts]
source = "crm"
table = "contacts"
subject_key = ["customer_id"]
row_key = ["contact_id"]
max_rows_per_subject = 6

[datasets.contacts.columns]
age = { type = "integer", scope = "transaction", bounds = [17, 100], index = true }
job = { type = "text", scope = "transaction", index = true, groups_per_subject = 3 }
duration = { type = "integer", scope = "transaction", bounds = [0, 1500] }
education = { type = "text", scope = "identity", groups_per_subject = 3 }
y = { type = "text", scope = "sentiment", public_keys = ["no", "yes"] }
"""


def write_sqlite(path: Path, rows: list[dict[str, Any]]) -> None:
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE contacts (customer_id TEXT, contact_id INTEGER, age INTEGER, "
                 "job TEXT, duration INTEGER, education TEXT, y TEXT)")
    conn.executemany("INSERT INTO contacts VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [tuple(r[c] for c in COLUMNS) for r in rows])
    conn.commit()
    conn.close()


@dataclass
class NodeProcess:
    home: Path
    address: str
    ca_pem: bytes
    did: str
    process: subprocess.Popen[bytes]
    wallets: list[Identity] = field(default_factory=list)

    def client(self, who: Identity) -> NodeClient:
        return NodeClient(self.address, self.ca_pem, who)


def make_home(tmp: Path, source_toml: str, privacy: str = "dp") -> Path:
    home = tmp / "node"
    run_cli("sov-node", "init", "--home", str(home), "--name", "test-node", "--region", "eu-test")
    (home / "datamap.toml").write_text(source_toml + DATASET_TOML)
    if privacy != "dp":
        set_privacy(home, privacy)
    return home


def sqlite_source(tmp: Path, rows: list[dict[str, Any]]) -> str:
    """``rows`` written to ``tmp/crm.db``, and the data map's source table naming it (the one
    source the tests' data map, DATASET_TOML, reads)."""
    write_sqlite(tmp / "crm.db", rows)
    return f'[sources.crm]\nkind = "sqlite"\npath = "{tmp / "crm.db"}"\n'


def sqlite_home(tmp: Path, rows: list[dict[str, Any]], privacy: str = "dp") -> Path:
    """A node home made with ``sov-node init`` whose data map reads ``rows`` from SQLite."""
    return make_home(tmp, sqlite_source(tmp, rows), privacy)


def set_privacy(home: Path, privacy: str, **settings: Any) -> None:
    """Set node.toml's ``privacy`` (and other [node] keys) as an operator would."""
    import tomllib

    import tomli_w

    config = tomllib.loads((home / "node.toml").read_text())
    config["node"].update(privacy=privacy, **settings)
    (home / "node.toml").write_text(tomli_w.dumps(config))


def bind_all(home: Path, wallets: list[Identity]) -> None:
    """Bind wallet i to customer C{i:03d} (in-process: the CLI path is tested separately)."""
    node = load_home(home, PASSPHRASE)
    vault = Vault(node.vault_path, node.keys)
    for i, wallet in enumerate(wallets):
        vault.bind([f"C{i:03d}"], wallet.did)


def serve(home: Path, *, workers: int = 1, port: int = 0) -> NodeProcess:
    """``sov-node serve`` as a real process (``workers`` processes sharing the port)."""
    port_file = home / f"port-{uuid.uuid4().hex}"
    process = subprocess.Popen(
        [str(BIN / "sov-node"), "serve", "--home", str(home), "--listen", f"127.0.0.1:{port}",
         "--port-file", str(port_file), "--workers", str(workers)], env=env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # whatever fails from here on, the server process must not outlive the test
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("sov-node serve did not start")
            time.sleep(0.05)
        node = load_home(home, PASSPHRASE)
        return NodeProcess(home, f"127.0.0.1:{port_file.read_text()}", node.ca_pem(),
                           node.identity.did, process)
    except BaseException:
        process.kill()
        process.wait()
        raise


def stop(node: NodeProcess) -> None:
    """SIGTERM (a graceful stop); a server still running after 10 s is killed and the test
    fails, since SIGTERM must stop it."""
    node.process.terminate()
    try:
        node.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        node.process.kill()
        node.process.wait()
        raise AssertionError("sov-node serve did not stop within 10 s of SIGTERM") from None


@contextmanager
def serving_customers(home: Path, *, workers: int = 1) -> Iterator[NodeProcess]:
    """The synced node at ``home`` with SUBJECTS new wallets bound to its first customers
    (``.wallets``), served as a real process and stopped afterwards."""
    run_cli("sov-node", "sync", "--home", str(home))
    wallets = [Identity.generate() for _ in range(SUBJECTS)]
    bind_all(home, wallets)
    served = serve(home, workers=workers)
    served.wallets = wallets
    try:
        yield served
    finally:
        stop(served)


def grant_all(node: NodeProcess, requester: Identity, wallets: list[Identity], *,
              purpose: str = "marketing-analytics", scopes: tuple[str, ...] = ("transaction",),
              **kwargs: Any) -> list[str]:
    ids = []
    for wallet in wallets:
        credential = issue_grant(wallet, requester=requester.did, nodes=[node.did],
                                 purpose=purpose, scopes=list(scopes),
                                 ttl=timedelta(hours=24), **kwargs)
        with node.client(wallet) as client:
            ids.append(client.submit_grant(credential).grant_id)
    return ids


@pytest.fixture(scope="module")
def sqlite_node(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]
                ) -> Iterator[NodeProcess]:
    """A served node over a SQLite source, every customer bound to a wallet."""
    tmp = tmp_path_factory.mktemp("sqlite-node")
    home = sqlite_home(tmp, bank_rows)
    run_cli("sov-node", "sync", "--home", str(home))
    wallets = [Identity.generate() for _ in range(SUBJECTS)]
    bind_all(home, wallets)
    node = serve(home)
    node.wallets = wallets
    yield node
    stop(node)


@dataclass
class InProcessNode:
    """A node's parts without the gRPC server, for engine-level tests."""

    home: NodeHome
    vault: Vault
    engine: QueryEngine
    store: GrantStore
    wallets: list[Identity]


THRESHOLD = EngineSettings(k=5, privacy="threshold")


def in_process_node(tmp: Path, rows: list[dict[str, Any]], name: str,
                    settings: EngineSettings | None = None) -> InProcessNode:
    """A synced vault over a SQLite source, every customer bound to a fresh wallet; the
    engine in dp mode unless ``settings`` say otherwise (THRESHOLD where exact answers and
    the overlap control are the point)."""
    home = init_home(tmp / "node", PASSPHRASE, name=name)
    home.datamap_path.write_text(sqlite_source(tmp, rows) + DATASET_TOML)
    vault = Vault(home.vault_path, home.keys)
    sync(vault, home.datamap())
    wallets = [Identity.generate() for _ in range(SUBJECTS)]
    for i, wallet in enumerate(wallets):
        vault.bind([f"C{i:03d}"], wallet.did)
    settings = settings or EngineSettings(k=5)
    engine = QueryEngine(vault, home.datamap(), home.identity.did, settings)
    store = GrantStore(vault, home.identity.did, max_ttl=timedelta(hours=72),
                       clock_skew=timedelta(minutes=5),
                       default_budget=settings.grant_budget if settings.dp else None)
    return InProcessNode(home, vault, engine, store, wallets)
