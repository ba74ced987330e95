"""The node anchors its access-log heads in the hash ledger, and a ledger outage costs nothing.

Real processes: `sov-ledger serve` and `sov-node serve` over TLS. With the ledger down the node
keeps answering, queues every head durably and retries on its schedule; once the ledger is
back every queued head is anchored (no head lost, the last one equal to the chain head), and
`sov-audit verify` accepts the receipts the node kept.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from agent_node.requester import Requester
from consent.identity import Identity
from tests.agent_node.conftest import (
    BIN,
    SUBJECTS,
    NodeProcess,
    bind_all,
    grant_all,
    run_cli,
    serve,
    sqlite_home,
    stop,
)
from tests.wallet.conftest import LedgerProcess

QUERY = {"dataset": "contacts", "purpose": "marketing-analytics", "measures": ["count"],
         "group_by": ["job"]}
PUSH_SECONDS = 0.3


class RestartableLedger(LedgerProcess):
    """A ledger that can be stopped and served again from the same home and address."""

    def restart(self) -> None:
        self.proc = subprocess.Popen(
            [self.proc.args[0], "serve", "--home", str(self.home), "--listen", self.address],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        assert "serving on" in self.proc.stdout.readline()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[RestartableLedger]:
    process = RestartableLedger(tmp_path)
    yield process
    process.stop()


@pytest.fixture
def node(tmp_path: Path, bank_rows: list[dict[str, Any]], ledger: RestartableLedger
         ) -> Iterator[NodeProcess]:
    home = sqlite_home(tmp_path, bank_rows)
    config = tomllib.loads((home / "node.toml").read_text())
    config["node"].update(ledger_address=ledger.address, ledger_ca=str(ledger.ca_path),
                          ledger_push_seconds=PUSH_SECONDS)  # no key file: pinned on first use
    (home / "node.toml").write_text(tomli_w.dumps(config))
    run_cli("sov-node", "sync", "--home", str(home))
    wallets = [Identity.generate() for _ in range(SUBJECTS)]
    bind_all(home, wallets)
    process = serve(home)
    ledger.register(process.did)
    process.wallets = wallets
    yield process
    stop(process)


def heads(home: Path) -> list[tuple[int, str, str | None, int, str | None]]:
    with sqlite3.connect(home / "vault.sqlite") as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'ledger_heads'").fetchone():
            return []  # the node creates the queue when it first queues a head
        return db.execute("SELECT sequence, hash, receipt, attempts, last_error FROM ledger_heads "
                          "ORDER BY sequence").fetchall()


def chain_head(home: Path) -> tuple[int, str]:
    with sqlite3.connect(home / "activity.sqlite") as db:  # the access log's file
        return db.execute("SELECT seq, hash FROM access_log ORDER BY seq DESC LIMIT 1").fetchone()


def wait_for(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_ledger_down_queues_heads_and_loses_nothing(
    node: NodeProcess, ledger: RestartableLedger, tmp_path: Path
) -> None:
    crm = Identity.generate()
    grant_ids = grant_all(node, crm, node.wallets)
    requester = Requester(crm)
    requester.ask(node.address, node.ca_pem, {**QUERY, "grant_ids": grant_ids})
    wait_for(lambda: any(h[2] for h in heads(node.home)), "the first head to be anchored")
    assert heads(node.home)[0][0] == 1

    ledger.stop()
    answered = []
    for _ in range(3):  # the node keeps answering while the ledger is down
        answer = requester.ask(node.address, node.ca_pem, {**QUERY, "grant_ids": grant_ids})
        answered.append(answer.event_seq)
        time.sleep(PUSH_SECONDS * 2)  # let the pusher queue this head and fail to send it
    assert answered == [2, 3, 4]
    wait_for(lambda: any(h[3] >= 1 and h[2] is None for h in heads(node.home)),
             "a failed push attempt to be recorded")
    pending = [h for h in heads(node.home) if h[2] is None]
    assert pending and all("ledger Append failed" in (h[4] or "") for h in pending if h[3])
    # The operator's on-demand push says so in one sentence and leaves the queue intact.
    result = run_cli("sov-node", "log", "push", "--home", str(node.home), check=False)
    assert result.returncode == 1 and "stay queued" in result.stderr
    assert "Traceback" not in result.stderr
    still = {h[0] for h in heads(node.home) if h[2] is None}
    assert {h[0] for h in pending} <= still

    ledger.restart()
    last_seq, last_hash = chain_head(node.home)
    wait_for(lambda: all(h[2] for h in heads(node.home))
             and heads(node.home)[-1][0] == last_seq, "the queue to drain")
    rows = heads(node.home)
    assert rows[-1][1] == last_hash  # the anchored head is the node's chain head
    assert [h[0] for h in rows] == sorted({h[0] for h in rows})
    assert {h[0] for h in pending} <= {h[0] for h in rows}  # every queued head was anchored
    # Every head went in signed by the node itself (ledger.authority), the only author the
    # ledger accepts an access head of this node from.
    entries = [json.loads(h[2])["entry"] for h in rows]
    assert all(e["author"] == node.did == e["node"] and len(e["signature"]) == 128
               for e in entries)

    out = tmp_path / "receipts"
    run_cli("sov-node", "log", "receipts", "--home", str(node.home), "--out", str(out))
    files = sorted(out.glob("receipt-*.json"))
    assert len(files) == len(rows)
    audit = subprocess.run(
        [str(BIN / "sov-audit"), "verify", "--log-key",
         str(ledger.home / "log-public.json"), *map(str, files)],
        capture_output=True, text=True, timeout=120, check=False)
    assert audit.returncode == 0, audit.stdout
