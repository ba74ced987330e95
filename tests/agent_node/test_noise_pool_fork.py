"""Attack (H9) on the pooled OpenDP noise (agent_node.privacy._NoisePool): a process forked
while another thread is inside the pool (or adding a measurement to the cache) holds that
thread's lock forever, since the thread does not exist in the child. The child's first
noisy answer must not wait on it; nor may it get the parent's draws (the existing test of
independence across forks is tests/agent_node/test_privacy_mechanisms.py)."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

from agent_node import privacy
from agent_node.engine import EngineSettings
from consent.grants import issue_grant
from consent.identity import Identity
from tests.agent_node.conftest import in_process_node


def _fork_while_held(lock_of: str) -> tuple[bool, str]:
    """Fork with the named lock held by this thread (as another thread would hold it);
    (whether the child answered within 20 s, what it answered)."""
    lock = (privacy._NOISE._lock if lock_of == "pool"
            else privacy._MEASUREMENTS_LOCK)
    read, write = os.pipe()
    with lock:
        pid = os.fork()
        if pid == 0:
            try:  # a budget not used before in this process: a new measurement is cached
                released, _ = privacy.noisy_counts([1000] * 4, 7, Fraction(1, 7 + len(lock_of)))
                os.write(write, repr([r.value for r in released]).encode())
            finally:
                os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)  # the child we forked, hung on the lock
        os.waitpid(pid, 0)
        os.close(read)
        return False, ""
    answer = os.read(read, 4096).decode()
    os.close(read)
    return True, answer


def test_a_child_forked_while_a_thread_holds_the_noise_pool_lock_answers() -> None:
    privacy.noisy_counts([0], 7, Fraction(1, 5))  # a pool and a cached measurement exist
    for lock_of in ("pool", "measurements"):
        answered, values = _fork_while_held(lock_of)
        assert answered, f"the forked child waited forever on the {lock_of} lock"
        assert len(json.loads(values)) == 4


def test_the_questions_of_one_report_never_share_a_draw(tmp_path: Path,
                                                         bank_rows: list[dict[str, Any]]
                                                         ) -> None:
    """A report of sixteen identical questions (one snapshot, one write transaction, the
    same noise scale for all): each count gets its own draw from the pool. Were a draw
    shared, or the pool handed out again, the sixteen noisy counts would be equal; with a
    scale of 120 about a dozen distinct values are expected, all but never fewer than 8."""
    parts = in_process_node(tmp_path, bank_rows, "report-noise",
                            EngineSettings(grant_budget=1000.0))
    requester = Identity.generate()
    node = parts.home.identity.did
    for wallet in parts.wallets[:30]:
        parts.store.submit(issue_grant(wallet, requester=requester.did, nodes=[node],
                                       purpose="marketing-analytics", scopes=["transaction"],
                                       ttl=timedelta(hours=24)))
    query = {"dataset": "contacts", "purpose": "marketing-analytics", "measures": ["count"],
             "epsilon": 0.05}
    answers = parts.engine.run_report([query] * 16, requester.did)
    counts = [a["groups"][0]["values"]["count"] for a in answers  # type: ignore[index]
              if isinstance(a, dict)]
    assert len(counts) == 16 and len(set(counts)) >= 8, counts
