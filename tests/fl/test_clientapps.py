"""agent_node.clientapps: the SuperExec's ``flwr-clientapp`` is the launcher, and what runs is
Flower's own entry point in a child forked from the warm process (its output goes to the warm
process's log, its exit code back to the launcher); with no warm process the launcher runs
the real ``flwr-clientapp``. Real processes; the full path (a run's messages through it) is
exercised by every deployment test."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_node.clientapps import write_launcher
from fl.deploy import executable

USAGE_ERROR = "one of the arguments --token --token-file is required"


@pytest.fixture
def warm(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A warm process on a socket; (socket, its log)."""
    sock, log = tmp_path / "c.sock", tmp_path / "warm.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agent_node.clientapps", "--socket",
                                 str(sock)], stdout=out, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 120  # it imports PyTorch and Opacus first
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield sock, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not sock.exists()  # removed on SIGTERM


def test_the_launcher_runs_flowers_clientapp_in_a_forked_child(
        warm: tuple[Path, Path], tmp_path: Path) -> None:
    sock, log = warm
    launcher = write_launcher(tmp_path / "bin", sock, executable("flwr-clientapp"))
    assert oct(sock.stat().st_mode & 0o777) == "0o600"
    done = subprocess.run([str(launcher), "--not-an-option"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2  # argparse's, from Flower's entry point in the child
    assert USAGE_ERROR not in done.stderr  # the child wrote it, to the warm process's log
    deadline = time.monotonic() + 10
    while USAGE_ERROR not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert USAGE_ERROR in log.read_text()


def test_without_the_warm_process_the_launcher_runs_the_real_one(tmp_path: Path) -> None:
    launcher = write_launcher(tmp_path / "bin", tmp_path / "absent.sock",
                              executable("flwr-clientapp"))
    done = subprocess.run([str(launcher), "--not-an-option"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2 and USAGE_ERROR in done.stderr
