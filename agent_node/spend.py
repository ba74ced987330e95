"""The privacy-budget debit journal: what each answer debited, one row per grant set.

In dp mode an answer debits its epsilon (and one query) from every grant it used. Writing
that as one ``grant_usage`` update per grant made every answer's write transaction
O(consenting customers) (issue 15: 0.13 -> 0.06 of a bare echo). Instead the debit is
journalled once per answer against the answer's grant set, the same set its access event
names (``agent_node.accesslog.set_id``), in the same transaction as that event::

    grant_set_spend(set_id PRIMARY KEY, queries, spent_micro)

and a grant's use is derived: ``grant_usage`` (debits made per grant: threshold mode's
max_queries counters, vaults from before the journal) plus the sum of the rows of every set
holding the grant. The row ``set_id = 0`` holds the totals debited over all sets (set ids
start at 1), which makes the budget check O(1) in the common case (``HeadroomCache``).

Exactness is unchanged: integer micro-epsilon, and a debit is checked inside the write
transaction against the exact spend before it is written (``check``), so no grant is ever
overspent, not even by a rounding tolerance.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from agent_node import locations

#: ``{db}``: the schema the journal lives in.
SCHEMA = """
CREATE TABLE IF NOT EXISTS {db}.grant_set_spend (
  set_id INTEGER PRIMARY KEY, queries INTEGER NOT NULL DEFAULT 0,
  spent_micro INTEGER NOT NULL DEFAULT 0);
"""
TOTALS = 0  # the row of totals over every set
CACHE_SIZE = 4096


TABLES = ("grant_set_spend",)


def ensure(conn: sqlite3.Connection, db: str = "main") -> None:
    conn.execute(SCHEMA.format(db=db))


def usage(conn: sqlite3.Connection, grant_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """(queries used, micro-epsilon spent) of each grant id with any use: its own counters
    plus the journal rows of every set holding it. Grants never used are absent."""
    from agent_node import grantstore  # it imports this module

    wanted = sorted(set(grant_ids))
    ids = json.dumps(wanted)
    found = grantstore.counters(conn, wanted)
    for gid, q, m in conn.execute(
            "SELECT m.grant_id, SUM(s.queries), SUM(s.spent_micro) FROM access_set_grants m "
            "JOIN grant_set_spend s ON s.set_id = m.set_id WHERE m.grant_id IN "
            "(SELECT value FROM json_each(?)) GROUP BY m.grant_id", (ids,)):
        used, spent = found.get(gid, (0, 0))
        found[gid] = (used + int(q), spent + int(m))
    return found


def totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """(queries, micro-epsilon) journalled over every set so far."""
    row = conn.execute("SELECT queries, spent_micro FROM grant_set_spend WHERE set_id = ?",
                       (TOTALS,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def debit(conn: sqlite3.Connection, set_id: int, micro: int) -> None:
    """Journal one answer debiting ``micro`` micro-epsilon and one query from every grant of
    the grant set ``set_id``, inside the caller's write transaction (after ``check``)."""
    conn.executemany(
        "INSERT INTO grant_set_spend (set_id, queries, spent_micro) VALUES (?, 1, ?) "
        "ON CONFLICT (set_id) DO UPDATE SET queries = queries + 1, "
        "spent_micro = spent_micro + excluded.spent_micro",
        [(set_id, micro), (TOTALS, micro)])


@dataclass(frozen=True)
class Headroom:
    """What a grant set had left when it was last computed exactly: the smallest budget left
    (micro-epsilon) and the fewest queries left (max_queries grants; None: no such grant) over
    its grants, and the journal totals at that moment."""

    micro: int
    queries: int | None
    at: tuple[int, int]


class HeadroomCache:
    """Lower bounds on what each grant set has left, so that checking a debit needs one row.

    Every debit lowers any grant's budget by at most its own amount, so a set's headroom now
    is at least its exact headroom then minus everything journalled since (the totals row).
    When that bound covers the debit the check passes without reading the set's grants;
    otherwise the exact spend is read. Entries are stored only once the transaction that
    computed them committed (``remember`` from an after-commit callback), so a rolled-back
    batch never leaves a bound behind. Budgets themselves never change for a grant id.
    """

    def __init__(self) -> None:
        self._entries: dict[str, Headroom] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Headroom | None:
        return self._entries.get(key)

    def remember(self, key: str, headroom: Headroom) -> None:
        with self._lock:
            if len(self._entries) >= CACHE_SIZE:
                self._entries.clear()
            self._entries[key] = headroom


def check(conn: sqlite3.Connection, cache: HeadroomCache, key: str, micro: int,
          budgets: Callable[[], Mapping[str, int]], limited: Iterable[str] = ()
          ) -> tuple[bool, Headroom | None]:
    """Whether every grant of a set (cached under ``key``, the set's digest, known before the
    set is stored; ``budgets()``: grant id -> its budget in
    micro-epsilon) can pay ``micro`` and, those among ``limited`` (grants with max_queries),
    one more query. Inside the write transaction. Returns (ok, the exact headroom to
    remember once the transaction commits, or None when the cached bound sufficed)."""
    now = totals(conn)
    known = cache.get(key)
    # now >= at: a journal that went back (a vault restored from an older backup while
    # serving) is not the history the bound was computed on; read the exact spend then.
    if known is not None and now[0] >= known.at[0] and now[1] >= known.at[1]:
        spent, asked = now[1] - known.at[1], now[0] - known.at[0]
        if known.micro - spent >= micro and (known.queries is None
                                             or known.queries - asked >= 1):
            return True, None
    of = budgets()
    used = usage(conn, of)
    least = min((of[g] - used.get(g, (0, 0))[1] for g in of), default=micro)
    from agent_node import grantstore

    limits = grantstore.query_limits(conn, list(limited)) if limited else {}
    fewest = min((limit - used.get(g, (0, 0))[0] for g, limit in limits.items()), default=None)
    exact = Headroom(least, fewest, now)
    return least >= micro and (fewest is None or fewest >= 1), exact


locations.table("grant_set_spend", "agent_node.spend", "", "none", database="activity")
