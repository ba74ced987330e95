"""The training runs store: which Flower run each signed run plan is bound to (the
``training_runs`` table, used by ``agent_node.training``), and its entry in the node's
data-location registry (``agent_node.locations``).

Kept apart from ``agent_node.training`` so that the registry can be read without importing
Flower. The table holds plan ids, run ids and requester DIDs: nothing about customers (what a
training phase read about whom is in the access log, under its events).
"""

from __future__ import annotations

import sqlite3

from agent_node import locations

SCHEMA = ("CREATE TABLE IF NOT EXISTS training_runs (plan_id TEXT PRIMARY KEY, "
          "run_id TEXT NOT NULL, requester TEXT NOT NULL, first_seen TEXT NOT NULL) "
          "WITHOUT ROWID")


def bind_run(conn: sqlite3.Connection, plan_id: str, run_id: str, requester: str,
             now: str) -> str:
    """Bind ``plan_id`` to ``run_id`` on first use (inside the caller's transaction); the
    run id the plan is bound to."""
    conn.execute("INSERT OR IGNORE INTO training_runs (plan_id, run_id, requester, "
                 "first_seen) VALUES (?, ?, ?, ?)", (plan_id, run_id, requester, now))
    return str(conn.execute("SELECT run_id FROM training_runs WHERE plan_id = ?",
                            (plan_id,)).fetchone()[0])


locations.table("training_runs", "agent_node.trainingstore", "", "none")
