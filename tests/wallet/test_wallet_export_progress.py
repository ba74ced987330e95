"""Progress of a wallet export (issue 16: long work shows progress): ``Wallet.export`` reports
the node's answer and then the rows as it writes them, a batch at a time, and
``consent-wallet export`` draws that with the shared display (consent.commandline.progress)
on a terminal only, never under ``--json`` or into a pipe. The file is the same document
whatever the batching."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from tests.wallet.conftest import NodeProcess
from tests.wallet.wallet_helpers import PASSPHRASE, WalletCLI
from wallet import service
from wallet.service import Wallet

CONSENT_WALLET = str(Path(sys.executable).with_name("consent-wallet"))


def _on_a_terminal(args: list[str]) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal: the exit status and what the terminal showed."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=secondary,
                            stdin=subprocess.DEVNULL,
                            env={**os.environ, "CONSENT_WALLET_PASSPHRASE": PASSPHRASE,
                                 "COLUMNS": "100"})
    os.close(secondary)
    shown = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    status = proc.wait(timeout=60)
    os.close(primary)
    return status, shown.decode(errors="replace")


def test_export_reports_its_progress_and_writes_the_whole_document(
        initialised: WalletCLI, node: NodeProcess, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "EXPORT_BATCH", 2)  # the node holds 3 of this customer's rows
    told: list[tuple[str, int, int | None]] = []
    wallet = Wallet.open(initialised.home, PASSPHRASE)
    try:
        wallet.add_node(node.address, node.ca_pem)
        node.bind(wallet.identity.did)
        document = wallet.export(node.address, tmp_path / "mine.json",
                                 progress=lambda label, n, total: told.append((label, n, total)))
    finally:
        wallet.close()
    assert told == [("asking the node", 0, 1), ("asking the node", 1, 1),
                    ("writing rows", 0, 3), ("writing rows", 2, 3), ("writing rows", 1, 3)]
    written = json.loads((tmp_path / "mine.json").read_text())
    assert written == json.loads(json.dumps(document, default=str))
    assert len(written["data"]["datasets"]["orders"]) == 3


def test_the_cli_draws_export_progress_on_a_terminal_only(initialised: WalletCLI,
                                                          node: NodeProcess,
                                                          tmp_path: Path) -> None:
    did = json.loads(initialised.ok("whoami", "--json").output)["did"]
    node.bind(did)
    initialised.ok("nodes", "add", node.address, "--ca", str(node.ca_path))
    base = [CONSENT_WALLET, "export", "--home", str(initialised.home), "--node", node.address]
    status, shown = _on_a_terminal([*base, "--out", str(tmp_path / "a.json")])
    assert status == 0 and "writing rows" in shown and "3/3" in shown, shown
    status, shown = _on_a_terminal([*base, "--out", str(tmp_path / "b.json"), "--json"])
    assert status == 0 and "writing rows" not in shown, shown
    piped = initialised.ok("export", "--node", node.address, "--out", str(tmp_path / "c.json"))
    assert "writing rows" not in piped.output
