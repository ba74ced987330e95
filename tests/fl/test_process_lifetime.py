"""A SuperNode and its warm ClientApp process never outlive the process that started them,
even one killed with SIGKILL (fl.deploy.die_with_parent): a crashed sov-node serve leaves no
Flower process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from protos.tls import create_ca
from protos.transport import free_port

STARTER = """
import sys, time
from pathlib import Path
from agent_node.flnode import SuperNodeProcess
proc = SuperNodeProcess(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])).start()
print(proc.proc.pid, proc.warm.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}").exists() \
        else "X"
    return state != "Z"


def test_a_supernode_dies_with_its_killed_parent(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(create_ca("nobody").cert_pem)
    home = tmp_path / "node"
    home.mkdir()
    parent = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(home), f"127.0.0.1:{free_port()}", str(ca)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]  # type: ignore[union-attr]
        assert len(pids) == 2 and all(_alive(p) for p in pids)  # SuperNode, warm ClientApps
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(pids[0]), "the SuperNode outlived its killed parent"
        assert not _alive(pids[1]), "the warm ClientApp process outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
