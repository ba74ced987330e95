"""Fixtures of the wallet tests: a fresh wallet home, the CLI runner, a real agent node."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from wallet_helpers import PASSPHRASE, WalletCLI


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty wallet home; the passphrase comes from the environment, as scripts do."""
    monkeypatch.setenv("CONSENT_WALLET_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("CONSENT_WALLET_HOME", raising=False)
    return tmp_path / "wallet-home"


@pytest.fixture
def wallet_cli(home: Path) -> WalletCLI:
    return WalletCLI(home)


@pytest.fixture
def initialised(wallet_cli: WalletCLI) -> Iterator[WalletCLI]:
    wallet_cli.ok("init")
    yield wallet_cli


# -- a real agent node process -----------------------------------------------------------------

NODE_PASSPHRASE = "node operator passphrase"
CUSTOMER_KEY = "C-0042"  # the wallet holder's customer id in the node's sales database

DATAMAP = """
[sources.sales]
kind = "sqlite"
path = "sales.db"

[datasets.orders]
source = "sales"
table = "orders"
subject_key = ["customer_id"]
row_key = ["order_id"]

[datasets.orders.columns]
amount = { type = "real", scope = "transaction", bounds = [0, 10000] }
region = { type = "text", scope = "transaction", index = true }
email = { type = "text", scope = "identity" }
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NodeProcess:
    """An agent node home (tiny SQLite source, synced) served by a separate process."""

    def __init__(self, root: Path, *, name: str = "distributor-eu", region: str = "eu-west"
                 ) -> None:
        from agent_node.home import init_home, load_home
        from agent_node.vault import Vault, sync

        self.home = root / "node"
        init_home(self.home, NODE_PASSPHRASE, name=name, region=region)
        with sqlite3.connect(self.home / "sales.db") as db:
            db.execute("CREATE TABLE orders (order_id TEXT, customer_id TEXT, amount REAL, "
                       "region TEXT, email TEXT)")
            db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", [
                (f"O-{i}", CUSTOMER_KEY if i < 3 else f"C-{i:04d}", 100.0 + i,
                 "north" if i % 2 else "south", f"c{i}@example.com") for i in range(12)])
        (self.home / "datamap.toml").write_text(DATAMAP)
        node_home = load_home(self.home, NODE_PASSPHRASE)
        self.did = node_home.identity.did
        self.vault = Vault(node_home.vault_path, node_home.keys)
        sync(self.vault, node_home.datamap())
        self.ca_pem = node_home.ca_pem()
        self.ca_path = self.home / "tls" / "ca.pem"
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None

    def bind(self, did: str, customer_key: str = CUSTOMER_KEY) -> None:
        self.vault.bind([customer_key], did)

    def start(self) -> None:
        env = {**os.environ, "SOV_NODE_PASSPHRASE": NODE_PASSPHRASE}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("node_launcher.py")), str(self.home),
             str(self.port)], env=env, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"the agent node did not start (said {line!r})")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    process = NodeProcess(tmp_path)
    process.start()
    yield process
    process.stop()
