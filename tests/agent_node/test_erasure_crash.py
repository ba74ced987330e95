"""Erasure is crash-safe (issue 13): a process killed with SIGKILL in the middle of an erasure
(inside the transaction that deletes the rows, or after it and before the proof) leaves a
state that `sov-node serve` completes on start; `sov-node erase` with the same request then
returns the same proof, and no byte of the node home holds the customer's markers."""

from __future__ import annotations

import json
import secrets
import signal
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_node import accesslog, locations
from agent_node.erasure import count_in_file
from agent_node.errors import InvalidRequest
from consent.grants import issue_grant
from ledger import erasure as protocol
from tests.agent_node.conftest import (
    PASSPHRASE,
    THRESHOLD,
    env,
    in_process_node,
    run_cli,
    serve,
    stop,
)
from tests.agent_node.test_erasure import MARKERS, _rows

CRASH = """
import dataclasses, json, os, signal, sys
from agent_node import locations
from agent_node.erasure import Erasure
from agent_node.home import load_home
from agent_node.vault import Vault
home = load_home(sys.argv[1], {passphrase!r})
request = json.loads(open(sys.argv[2]).read())
def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)
locations.locations()  # every owner registered
if sys.argv[3] == "mid-rows":  # inside step 1's transaction, after some rows went
    target = locations._REGISTRY["vault.grants"]
    def erase(conn, customer):
        target.erase(conn, customer)
        die()
    locations._REGISTRY["vault.grants"] = dataclasses.replace(target, erase=erase)
elif sys.argv[3] == "before-proof":  # step 1 committed, killed before the proof
    Erasure._prove = die
Erasure(home, Vault(home.vault_path, home.keys)).erase(request)
die()  # "before-sweep": proved, killed before the sweep of every file whole
"""


def _sweep(home: Path) -> tuple[int, str | None]:
    """(erasures whose values wait for the sweep, the last sweep's record)."""
    with sqlite3.connect(home / "vault.sqlite") as db:
        waiting = db.execute("SELECT count(*) FROM erasures WHERE sweep_needles IS NOT NULL"
                             ).fetchone()[0]
        row = db.execute("SELECT sweep FROM erasures").fetchone()
    return int(waiting), None if row is None else row[0]


def _state(home: Path) -> str | None:
    with sqlite3.connect(home / "vault.sqlite") as db:
        row = db.execute("SELECT state FROM erasures").fetchone()
    return None if row is None else str(row[0])


@pytest.mark.parametrize("stage", ["mid-rows", "before-proof", "before-sweep"])
def test_kill_9_mid_erasure_is_completed_on_restart(
        tmp_path: Path, bank_rows: list[dict[str, Any]], stage: str) -> None:
    node = in_process_node(tmp_path, _rows(bank_rows), "crash-node", THRESHOLD)
    alice = node.wallets[0]
    credential = issue_grant(alice, requester=alice.did, nodes=[node.home.identity.did],
                             purpose="marketing-analytics", scopes=["transaction"],
                             ttl=timedelta(hours=24))
    _, at = node.store.submit(credential)
    with node.vault.transaction() as conn:
        accesslog.remember_salt(conn, alice.did, secrets.token_hex(32), at)
    # A refusal logged under her DID: an access-log body the first step redacts.
    with pytest.raises(InvalidRequest):
        node.engine.run({"dataset": "nope", "measures": ["count"],
                         "purpose": "marketing-analytics"}, alice.did)
    request = protocol.issue_request(alice, node.home.identity.did)
    request_file = tmp_path / "request.json"  # outside the node home, as an operator keeps it
    request_file.write_text(json.dumps(request))
    home = node.home.path
    crashed = subprocess.run([sys.executable, "-c", CRASH.format(passphrase=PASSPHRASE),
                              str(home), str(request_file), stage], env=env(), timeout=120,
                             capture_output=True, text=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    if stage == "mid-rows":  # rolled back whole: her rows and grant are all still there
        assert _state(home) == "requested"
        with sqlite3.connect(home / "vault.sqlite") as db:
            assert db.execute("SELECT count(*) FROM grants").fetchone()[0] == 1
            assert db.execute("SELECT count(*) FROM bindings WHERE did = ?",
                              (alice.did,)).fetchone()[0] == 1
    elif stage == "before-proof":
        assert _state(home) == "erased"
    else:
        assert _state(home) == "proved" and _sweep(home) == (1, None)

    served = serve(home)  # finishes the erasure, and its sweep, before serving
    stop(served)
    assert _state(home) == "proved"
    waiting, swept = _sweep(home)
    assert waiting == 0
    if stage == "before-proof":  # the resumed scan read every file whole: no sweep to follow
        assert swept is None
    else:
        assert swept is not None and json.loads(swept)["hits"] == 0
    out = tmp_path / "proof.json"
    result = run_cli("sov-node", "erase", "--home", str(home), str(request_file), "--out",
                     str(out))
    assert "erased " + alice.did in result.stdout and "0 hit(s)" in result.stdout
    assert ("sweep of every file whole" in result.stdout) == (stage != "before-proof")
    proof = json.loads(out.read_text())["proof"]
    protocol.verify_proof(proof, node_did=node.home.identity.did, customer=alice.did,
                          request=request)
    assert protocol.scan_hits(proof) == 0
    # What the first step destroyed before the crash is proved, not what its rerun found.
    by_name = {loc["name"]: loc for loc in proof["locations"]}
    assert by_name["vault.access_log"]["rows"] == 1
    with sqlite3.connect(home / "activity.sqlite") as db:
        assert db.execute("SELECT count(*) FROM erasure_steps").fetchone() == (0,)
    # A rerun of step 1 knows the pages its deletion rewrote; a resumed scan does not, and
    # reads the whole vault.
    assert proof["scan"]["vault"] == ("rewritten and free pages" if stage != "before-proof"
                                      else "whole file")
    needles = [m.encode() for m in MARKERS.values()] + [alice.did.encode()]
    assert {f: n for f in locations.home_files(home)
            if (n := count_in_file(home / f, needles))} == {}


def test_sov_node_erase_bad_input_is_one_sentence(
        tmp_path: Path, bank_rows: list[dict[str, Any]]) -> None:
    node = in_process_node(tmp_path, bank_rows[:60], "bad-input-node", THRESHOLD)
    forged = protocol.issue_request(node.wallets[1], node.home.identity.did)
    forged["subject"] = node.wallets[0].did
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    result = run_cli("sov-node", "erase", "--home", str(node.home.path), str(path),
                     check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "signature does not verify" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _state(node.home.path) is None
