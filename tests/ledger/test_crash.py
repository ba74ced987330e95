"""Crash safety: SIGKILL a writer in the middle of a batch, restart, lose nothing acknowledged.

The writer is a real separate process writing to a real SQLite file; the kill lands while a
batch of thousands of events is being hashed, signed or committed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger.home import open_log
from ledger.verify import verify_consistency_proof, verify_receipt

from .conftest import PASSPHRASE

WRITER = Path(__file__).with_name("crash_writer.py")
BATCH = 3000


Acks = list[tuple[int, list[str]]]


def _run_and_kill(home: Path, start: int, kill_at_begin: int, delay: float) -> Acks:
    """Start a writer, SIGKILL it ``delay`` s after it begins batch number ``kill_at_begin``."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(home), PASSPHRASE, str(start), str(BATCH)],
        stdout=subprocess.PIPE,
        text=True,
    )
    acks: Acks = []
    begins = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        word, *rest = line.split()
        if word == "ACK" and rest[-1] == "END":  # a line cut by the kill acknowledges nothing
            acks.append((int(rest[0]), rest[1:-1]))
        elif word == "BEGIN":
            begins += 1
            if begins == kill_at_begin:
                time.sleep(delay)
                os.kill(proc.pid, signal.SIGKILL)
                break
    # Lines written before the kill may still be buffered in the pipe: they count as acks.
    for line in proc.stdout:
        word, *rest = line.split()
        if word == "ACK" and rest[-1] == "END":  # a line cut by the kill acknowledges nothing
            acks.append((int(rest[0]), rest[1:-1]))
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return acks


@pytest.mark.slow
def test_sigkill_mid_batch_loses_no_acknowledged_entry(ledger_home) -> None:
    home, public = ledger_home
    acked: list[str] = []
    sizes: list[int] = []
    start = 0
    for round_no, delay in enumerate((0.0, 0.1, 0.25)):
        acks = _run_and_kill(home, start, kill_at_begin=3 + round_no % 2, delay=delay)
        assert acks, "the writer acknowledged nothing before it was killed"
        for size, hashes in acks:
            acked.extend(hashes)
            sizes.append(size)
        with open_log(home, PASSPHRASE) as log:
            # Opening re-checks the stored tree against the last signed head (atomicity).
            assert log.size >= sizes[-1]
            assert log.size % BATCH == 0, "a batch was half written"
            start = log.size
    with open_log(home, PASSPHRASE) as log:
        for entry_hash in acked[:: max(1, len(acked) // 200)] + acked[-5:]:
            verify_receipt(log.receipt(entry_hash), public)
        assert all(log.index_of(bytes.fromhex(h)) is not None for h in acked)
        for size in sizes:
            old, new = verify_consistency_proof(log.consistency(size), public)
            assert old.size == size and new.size == log.size
