"""Fixtures of the wallet tests: a fresh wallet home, the CLI runner, a real agent node."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protos.transport import free_port
from tests.wallet.wallet_helpers import PASSPHRASE, WalletCLI


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
amount = { type = "real", scope = "transaction", bounds = [0, 500] }
region = { type = "text", scope = "transaction", index = true, groups_per_subject = 1 }
email = { type = "text", scope = "identity" }
"""


SOV_NODE = str(Path(sys.executable).with_name("sov-node"))


def _sov_node(*args: str) -> str:
    env = {**os.environ, "SOV_NODE_PASSPHRASE": NODE_PASSPHRASE}
    proc = subprocess.run([SOV_NODE, *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"sov-node {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


class NodeProcess:
    """A node home set up with the operator's ``sov-node`` CLI and served by ``sov-node serve``.

    Tiny SQLite source (12 orders, 3 of them the wallet holder's), synced into the vault.
    """

    def __init__(self, root: Path, *, name: str = "distributor-eu", region: str = "eu-west"
                 ) -> None:
        self.home = root / "node"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        _sov_node("init", "--home", str(self.home), "--name", name, "--region", region,
                  "--listen", self.address)
        with sqlite3.connect(self.home / "sales.db") as db:
            db.execute("CREATE TABLE orders (order_id TEXT, customer_id TEXT, amount REAL, "
                       "region TEXT, email TEXT)")
            db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", [
                (f"O-{i}", CUSTOMER_KEY if i < 3 else f"C-{i:04d}", 100.0 + i,
                 "north" if i % 2 else "south", f"c{i}@example.com") for i in range(12)])
        (self.home / "datamap.toml").write_text(DATAMAP)
        _sov_node("sync", "--home", str(self.home))
        self.ca_path = self.home / "tls" / "ca.pem"
        self.ca_pem = self.ca_path.read_bytes()
        self.did = ""
        self.proc: subprocess.Popen[str] | None = None

    def bind(self, did: str, customer_key: str = CUSTOMER_KEY) -> None:
        _sov_node("subjects", "bind", "--home", str(self.home), customer_key, did)

    def start(self) -> None:
        port_file = self.home / "port"
        port_file.unlink(missing_ok=True)
        env = {**os.environ, "SOV_NODE_PASSPHRASE": NODE_PASSPHRASE, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [SOV_NODE, "serve", "--home", str(self.home), "--port-file", str(port_file)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "serving NAME (DID) on port N"
        deadline = time.monotonic() + 10  # the port file is written just after that line
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if "(did:key:" not in line or not port_file.exists():
            self.stop()
            raise RuntimeError(f"sov-node serve did not start (said {line!r})")
        self.did = line.split("(", 1)[1].split(")", 1)[0]
        assert int(port_file.read_text()) == self.port

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


LEDGER_PASSPHRASE = "ledger operator passphrase"
SOV_LEDGER = str(Path(sys.executable).with_name("sov-ledger"))


class LedgerProcess:
    """A ledger home from ``sov-ledger init`` served by ``sov-ledger serve`` over TLS."""

    def __init__(self, root: Path) -> None:
        self.home = root / "ledger"
        self.env = {**os.environ, "SOV_LEDGER_PASSPHRASE": LEDGER_PASSPHRASE,
                    "PYTHONUNBUFFERED": "1"}
        subprocess.run([SOV_LEDGER, "init", "--home", str(self.home)], env=self.env,
                       capture_output=True, check=True, timeout=120)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ca_path = self.home / "tls" / "ca.pem"
        self.proc = subprocess.Popen(
            [SOV_LEDGER, "serve", "--home", str(self.home), "--listen", self.address],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "serving on" not in line:
            self.stop()
            raise RuntimeError(f"sov-ledger serve did not start (said {line!r})")

    def register(self, did: str, name: str = "distributor-eu", role: str = "node") -> None:
        """Register a node (or the coordinator) as an author, as the operator does."""
        subprocess.run([SOV_LEDGER, "authors", "add", "--home", str(self.home), did,
                        "--name", name, "--role", role],
                       env=self.env, capture_output=True, check=True, timeout=60)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LedgerProcess]:
    process = LedgerProcess(tmp_path)
    yield process
    process.stop()
