"""Replay protection that survives restarts and is shared by every worker process: the owner
of the ``replay_nonces`` table (its schema and every statement on it).

``DurableReplayGuard.check`` refuses what ``consent.replay.ReplayGuard`` refuses (bad window,
a nonce this process saw). The nonce is then spent durably by an insert that fails when any
process (or this one before a restart) spent it already: a Query's by the query engine in the
same group-committed transaction as its access event (``pending`` hands it over), so an answer
is never released for a nonce that is not durably spent; other calls' at once
(``record=True``). Expired nonces are swept at most once a minute.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from agent_node import locations
from consent.errors import ReplayError
from consent.replay import ReplayGuard

if TYPE_CHECKING:
    from agent_node.vault import Vault

#: ``{db}``: the schema the table lives in (the vault's activity database).
SCHEMA = """
CREATE TABLE IF NOT EXISTS {db}.replay_nonces (
  nonce TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {db}.replay_nonces_expires ON replay_nonces(expires);
"""
TABLES = ("replay_nonces",)


def ensure(conn: sqlite3.Connection, db: str = "main") -> None:
    for statement in SCHEMA.format(db=db).split(";"):
        if statement.strip():
            conn.execute(statement)


@dataclass(frozen=True)
class Nonce:
    """A request nonce claimed by the replay guard, kept until ``expires``."""

    value: str
    expires: float


def record(conn: sqlite3.Connection, nonce: Nonce) -> None:
    """Spend ``nonce`` inside the caller's write transaction; ``ReplayError`` (before any
    write) when some process spent it already."""
    try:
        conn.execute("INSERT INTO replay_nonces (nonce, expires) VALUES (?, ?)",
                     (nonce.value, nonce.expires))
    except sqlite3.IntegrityError:
        raise ReplayError("this request was already received (replayed nonce)") from None


def record_if_new(conn: sqlite3.Connection, nonce: Nonce) -> None:
    """Spend ``nonce`` unless it is spent already (a refusal logged for a replay)."""
    conn.execute("INSERT OR IGNORE INTO replay_nonces (nonce, expires) VALUES (?, ?)",
                 (nonce.value, nonce.expires))


def sweep(conn: sqlite3.Connection, now: float) -> None:
    conn.execute("DELETE FROM replay_nonces WHERE expires < ?", (now,))


def spent(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """Every nonce spent and not yet swept (a restore carries them over)."""
    return conn.execute("SELECT nonce, expires FROM replay_nonces").fetchall()


def restore_spent(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Put back nonces spent on the live node into a restored database."""
    conn.executemany("INSERT OR IGNORE INTO replay_nonces (nonce, expires) VALUES (?, ?)",
                     rows)


class DurableReplayGuard:
    """Replay protection shared by every process serving one vault, surviving restarts."""

    SWEEP_SECONDS = 60.0

    def __init__(self, vault: Vault, window: timedelta) -> None:
        self.vault, self.window = vault, window
        self._memory = ReplayGuard(window=window)
        self._local = threading.local()
        self._swept = 0.0

    def check(self, nonce: str, timestamp: datetime, *, record: bool = False) -> None:
        now = datetime.now(UTC)
        self._local.pending = None
        self._memory.check(nonce, timestamp, now)
        # No lookup here: the durable insert (now, or with the Query's access event) is the
        # check, atomic across processes, and it refuses before anything is released.
        claimed = Nonce(nonce, max(timestamp, now).timestamp() + 2 * self.window.total_seconds())
        self._sweep(now.timestamp())
        if record:
            self.vault.commit(lambda conn, batch: self.record(conn, claimed))
        else:
            self._local.pending = claimed

    def pending(self) -> Nonce | None:
        """The nonce this thread's last ``check`` left for the caller to record, once."""
        claimed = getattr(self._local, "pending", None)
        self._local.pending = None
        return claimed  # type: ignore[no-any-return]

    @staticmethod
    def record(conn: sqlite3.Connection, nonce: Nonce) -> None:
        """Spend ``nonce`` inside the caller's write transaction (``record``)."""
        record(conn, nonce)

    def _sweep(self, now: float) -> None:
        if now - self._swept < self.SWEEP_SECONDS:
            return
        self._swept = now
        self.vault.commit(lambda conn, batch: sweep(conn, now))


locations.table("replay_nonces", "agent_node.nonces", "", "none", database="activity")
