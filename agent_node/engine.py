"""The consent-scoped aggregate query engine.

A validated ``Query`` is compiled to parameterised SQL over the vault: identifiers only from
the data map, values only as ``?`` parameters, operators from a whitelist. Rows are restricted
to the subjects whose active grants cover this requester, this purpose and every scope the
query touches. Per group the engine then

1. suppresses groups with fewer than k distinct subjects (k-anonymity threshold);
2. suppresses groups whose subject set differs from a set already released to the same
   requester on the same dataset by 1..k-1 subjects (query-set overlap control, the defence
   against isolating one subject by differencing two answers);
3. adds Laplace noise through OpenDP when a contributing grant carries a DP budget, with
   per-subject contributions bounded by the data map (``max_rows_per_subject``, ``bounds``),
   and debits the budget in the same SQLite transaction that appends the access event.

An answer holds group keys and aggregates only, never a row.

A query runs in two phases. The read phase (grants, consent filter, aggregation, k) runs on a
snapshot of the vault, concurrently with other queries. The write phase runs in the vault's
group-committed write transaction (``Vault.commit``), one query after another: it confirms
that consent has not shrunk since the snapshot (a trigger-maintained version; otherwise the
query is read again), debits query and privacy budgets with conditional UPDATEs (a budget
spent concurrently makes the query read again, and then refuse), applies the overlap
control against every set released so far and appends the access event. The answer leaves
only after that transaction is durably committed.
"""

from __future__ import annotations

import array
import hashlib
import json
import sqlite3
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import opendp.prelude as dp

from agent_node import accesslog
from agent_node.datamap import ColumnSpec, DataMap, DatasetSpec
from agent_node.errors import (
    BudgetExhausted,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    RequestError,
)
from agent_node.query import Filter, Query, query_from_dict
from agent_node.vault import Vault, encrypted_column, iso, plain_column, table_name
from agent_node.vaultcrypto import decrypt_cell
from consent.errors import UnknownPurpose
from consent.grants import check_purpose

dp.enable_features("contrib")

SQL_OPS = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
MIN_K = 2
EPS_TOLERANCE = 1e-9
FP_MOD = 2**62
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class EngineSettings:
    k: int = 5
    default_epsilon: float = 1.0

    def __post_init__(self) -> None:
        if self.k < MIN_K:
            raise ValueError(f"k must be at least {MIN_K}")


@dataclass
class _Group:
    rows: int = 0
    subjects: dict[int, list[float]] = field(default_factory=dict)  # sid -> partials
    stats: dict[str, list[float]] = field(default_factory=dict)  # column -> [n, sum, min, max]
    fingerprints: dict[int, int] = field(default_factory=dict)  # sid -> which rows were used


class Contended(RequestError):
    """Consent kept changing under a query; the caller may simply retry."""

    code = grpc.StatusCode.ABORTED
    reason = "contended"


class _Stale(Exception):
    """The read phase's view of consent or budgets is out of date: read again."""


@dataclass(frozen=True)
class _GrantRow:
    grant_id: str
    subject: str
    scopes: frozenset[str]
    dp_epsilon: float | None
    epsilon_spent: float


@dataclass(frozen=True)
class _Plan:
    """What the read phase found, handed to the write phase."""

    consent_version: str
    grants: list[_GrantRow]
    used_grants: list[_GrantRow]
    epsilon: float | None
    used_sids: list[int]
    candidates: list[tuple[tuple[Any, ...], _Group]]  # groups of >= k subjects, in key order
    suppressed: int  # groups already withheld by k
    exact: dict[tuple[Any, ...], dict[str, Any]]  # exact values (no DP budget)


class QueryEngine:
    def __init__(self, vault: Vault, datamap: DataMap, node_did: str,
                 settings: EngineSettings) -> None:
        self.vault, self.datamap, self.node_did, self.settings = vault, datamap, node_did, settings

    # -- entry point --------------------------------------------------------------------------

    def run(self, raw_query: Any, requester: str, now: datetime | None = None) -> dict[str, Any]:
        """Answer or refuse; either way one access event is appended."""
        now = now or datetime.now(UTC)
        try:
            query = query_from_dict(raw_query)
            return self._answer(query, requester, now)
        except RequestError as exc:
            self.log_refusal(raw_query, requester, now, exc)
            raise

    # -- validation ---------------------------------------------------------------------------

    def _validate(self, query: Query) -> tuple[DatasetSpec, dict[str, ColumnSpec], set[str]]:
        dataset = self.datamap.datasets.get(query.dataset)
        if dataset is None:
            known = ", ".join(sorted(self.datamap.datasets)) or "none"
            raise InvalidRequest(f"dataset {query.dataset!r} is not in this node's data map "
                                 f"(known: {known})", reason="unknown-dataset")
        try:
            check_purpose(query.purpose)
        except UnknownPurpose as exc:
            raise InvalidRequest(str(exc), reason="unknown-purpose") from None
        columns: dict[str, ColumnSpec] = {}
        for name in sorted(query.columns()):
            try:
                columns[name] = dataset.column(name)
            except KeyError as exc:
                raise InvalidRequest(str(exc.args[0]), reason="unknown-column") from None
        for measure in query.measures:
            if measure.column and measure.aggregate != "count" \
                    and not columns[measure.column].numeric:
                raise InvalidRequest(f"{measure.aggregate} needs a numeric column; "
                                     f"{measure.column!r} is text", reason="bad-measure")
        for flt in query.filters:
            _check_filter_value(flt, columns[flt.column])
        scopes = {c.scope for c in columns.values()} or {"transaction"}
        return dataset, columns, scopes

    # -- grants ---------------------------------------------------------------------------------

    def _grants(self, conn: sqlite3.Connection, query: Query, requester: str,
                scopes: set[str], now: datetime) -> list[_GrantRow]:
        ts = now.timestamp()
        if query.grant_ids:
            return [self._named_grant(conn, gid, query, requester, scopes, ts)
                    for gid in dict.fromkeys(query.grant_ids)]
        rows = conn.execute(
            "SELECT grant_id, subject, scopes, dp_epsilon, epsilon_spent, max_queries, "
            "queries_used FROM grants WHERE requester = ? AND purpose = ? AND revoked_at IS NULL "
            "AND not_before <= ? AND expires > ?", (requester, query.purpose, ts, ts)).fetchall()
        grants = [_GrantRow(r[0], r[1], frozenset(r[2].split(",")), r[3], r[4]) for r in rows
                  if scopes <= set(r[2].split(",")) and (r[5] is None or r[6] < r[5])]
        if not grants:
            raise PermissionDenied(
                "no active grant at this node lets this requester use "
                f"{', '.join(sorted(scopes))} data for {query.purpose!r}; ask customers for a "
                "grant covering that purpose and scope", reason="no-grant")
        return grants

    def _named_grant(self, conn: sqlite3.Connection, gid: str, query: Query, requester: str,
                     scopes: set[str], ts: float) -> _GrantRow:
        row = conn.execute(
            "SELECT subject, requester, purpose, scopes, not_before, expires, revoked_at, "
            "max_queries, queries_used, dp_epsilon, epsilon_spent FROM grants "
            "WHERE grant_id = ?", (gid,)).fetchone()
        if row is None:
            raise NotFound(f"this node holds no grant {gid}; the customer's wallet must submit "
                           "it first", reason="unknown-grant")
        subject, owner, purpose, granted, nbf, exp, revoked, max_q, used, eps, spent = row
        if owner != requester:
            raise PermissionDenied(f"grant {gid} was issued to another requester",
                                   reason="wrong-requester")
        if purpose != query.purpose:
            raise PermissionDenied(f"grant {gid} covers purpose {purpose!r}, not "
                                   f"{query.purpose!r}", reason="wrong-purpose")
        if revoked:
            raise PermissionDenied(f"grant {gid} was revoked by its subject at {revoked}",
                                   reason="revoked")
        if ts >= exp:
            raise PreconditionFailed(f"grant {gid} has expired; ask for a new grant",
                                     reason="expired")
        if ts < nbf:
            raise PreconditionFailed(f"grant {gid} is not valid yet; retry after its validFrom",
                                     reason="not-yet-valid")
        missing = sorted(scopes - set(granted.split(",")))
        if missing:
            raise PermissionDenied(f"grant {gid} does not cover the {missing[0]!r} scope this "
                                   "query touches; drop those columns or ask for that scope",
                                   reason="scope")
        if max_q is not None and used >= max_q:
            raise BudgetExhausted(f"grant {gid} has used all {max_q} of its queries",
                                  reason="queries-exhausted")
        return _GrantRow(gid, subject, frozenset(granted.split(",")), eps, spent)

    def _apply_dp_budget(self, query: Query, grants: list[_GrantRow]
                         ) -> tuple[list[_GrantRow], float | None]:
        if not any(g.dp_epsilon for g in grants) and query.epsilon is None:
            return grants, None
        epsilon = query.epsilon or self.settings.default_epsilon
        kept = []
        for grant in grants:
            if grant.dp_epsilon and grant.epsilon_spent + epsilon > grant.dp_epsilon \
                    + EPS_TOLERANCE:
                if query.grant_ids:
                    raise BudgetExhausted(
                        f"grant {grant.grant_id} has {grant.dp_epsilon - grant.epsilon_spent:.3g}"
                        f" of its privacy budget left, less than this query's epsilon "
                        f"{epsilon:g}; ask with a smaller epsilon or for a new grant",
                        reason="epsilon-exhausted")
                continue
            kept.append(grant)
        if not kept:
            raise BudgetExhausted("every matching grant has spent its privacy budget",
                                  reason="epsilon-exhausted")
        if any(m.aggregate in ("min", "max", "quantile") for m in query.measures):
            raise PreconditionFailed("min, max and quantiles are not released under a "
                                     "differential-privacy budget; use count, sum or avg",
                                     reason="dp-measure")
        return kept, epsilon

    # -- execution ------------------------------------------------------------------------------

    def _answer(self, query: Query, requester: str, now: datetime) -> dict[str, Any]:
        dataset, columns, scopes = self._validate(query)
        for _ in range(MAX_ATTEMPTS):
            plan = self._read(query, dataset, columns, scopes, requester, now)
            try:
                seq, released, suppressed = self.vault.commit(
                    lambda conn, plan=plan: self._commit(conn, plan, query, requester, now))
            except _Stale:
                continue  # consent or a budget changed under the read: answer afresh
            return self._reply(plan, query, dataset, columns, requester, now, seq, released,
                               suppressed)
        raise Contended("grants at this node changed while the query ran; retry it",
                        reason="contended")

    def _read(self, query: Query, dataset: DatasetSpec, columns: dict[str, ColumnSpec],
              scopes: set[str], requester: str, now: datetime) -> _Plan:
        """The read phase, on a consistent snapshot: grants, consent filter, aggregates,
        k-suppression and exact values. Nothing is written to the vault here."""
        with self.vault.snapshot() as conn:
            if not self.vault.dataset_ready(conn, dataset):
                raise PreconditionFailed(f"dataset {dataset.name!r} has not been synced yet; "
                                         "the operator runs 'sov-node sync'", reason="not-synced")
            version = _consent_version(conn)
            grants = self._grants(conn, query, requester, scopes, now)
            grants, epsilon = self._apply_dp_budget(query, grants)
            sids_by_subject = _eligible(conn, grants)
            source = self._source(conn, dataset, columns)
            groups = self._aggregate(conn, source, query, columns)
            k = self.settings.k
            ordered = sorted(groups, key=_sort_key)
            candidates = [(key, groups[key]) for key in ordered if len(groups[key].subjects) >= k]
            exact = {key: self._values(conn, source, query, columns, key, group)
                     for key, group in candidates} if epsilon is None else {}
        used = {sid for g in groups.values() for sid in g.subjects}
        used_grants = [g for g in grants if used.intersection(sids_by_subject.get(g.subject, ()))]
        return _Plan(version, grants, used_grants, epsilon, sorted(used), candidates,
                     len(groups) - len(candidates), exact)

    def _commit(self, conn: sqlite3.Connection, plan: _Plan, query: Query, requester: str,
                now: datetime) -> tuple[int, list[tuple[Any, ...]], int]:
        """The write phase, inside the group-committed transaction: confirm that consent did
        not shrink since the read, debit budgets atomically, apply the overlap control and
        append the access event."""
        if _consent_version(conn) != plan.consent_version:
            raise _Stale
        debits = [((plan.epsilon or 0.0) if g.dp_epsilon else 0.0, g.grant_id)
                  for g in plan.used_grants]
        cursor = conn.executemany(
            "UPDATE grants SET queries_used = queries_used + 1, epsilon_spent = epsilon_spent "
            "+ ?1 WHERE grant_id = ?2 AND (max_queries IS NULL OR queries_used < max_queries) "
            f"AND (dp_epsilon IS NULL OR epsilon_spent + ?1 <= dp_epsilon + {EPS_TOLERANCE})",
            debits)
        if cursor.rowcount != len(debits):
            raise _Stale  # a concurrent query spent the budget: the re-read refuses or drops it
        released, suppressed = self._release(conn, query, requester, plan.candidates, now)
        grant_ids = [g.grant_id for g in plan.used_grants]
        seq, _ = self._log(conn, query, requester, now, "answered", "ok", plan.used_sids,
                           grant_ids)
        return seq, released, plan.suppressed + suppressed

    def _reply(self, plan: _Plan, query: Query, dataset: DatasetSpec,
               columns: dict[str, ColumnSpec], requester: str, now: datetime, seq: int,
               released: list[tuple[Any, ...]], suppressed: int) -> dict[str, Any]:
        groups = dict(plan.candidates)
        epsilon = plan.epsilon
        values = [plan.exact[key] if epsilon is None
                  else _noisy_values(query, dataset, columns, groups[key], epsilon)
                  for key in released]
        return {
            "dataset": dataset.name, "purpose": query.purpose, "requester": requester,
            "node": self.node_did, "k": self.settings.k,
            "measures": [m.label for m in query.measures], "group_by": list(query.group_by),
            "groups": [{"key": list(key), "values": v}
                       for key, v in zip(released, values, strict=True)],
            "suppressed_groups": suppressed,
            "dp": {"epsilon": epsilon, "mechanism": "laplace", "library": "opendp"}
            if epsilon else None,
            "answered_at": iso(now), "event_seq": seq,
        }

    def _source(self, conn: sqlite3.Connection, dataset: DatasetSpec,
                columns: dict[str, ColumnSpec]) -> str:
        """The table to aggregate: the vault table, or a temp table of decrypted columns
        when the query touches encrypted ones (dropped when the connection reuses it)."""
        encrypted = [c for c in columns.values() if c.encrypted]
        if not encrypted:
            return table_name(dataset.name)
        plain = [c for c in columns.values() if not c.encrypted]
        conn.execute("DROP TABLE IF EXISTS temp._work")
        names = ["sid", "rfp", *(plain_column(c.name) for c in columns.values())]
        conn.execute(f"CREATE TEMP TABLE _work ({', '.join(names)})")
        select = ", ".join(["row_id", "sid", "rfp", *(plain_column(c.name) for c in plain),
                            *(encrypted_column(c.name) for c in encrypted)])
        ciphers: dict[int, Any] = {}
        batch = []
        for row in conn.execute(f'SELECT {select} FROM "{table_name(dataset.name)}" '
                                "WHERE sid IN (SELECT sid FROM temp._eligible)"):
            row_id, sid = row[0], row[1]
            if sid not in ciphers:
                ciphers[sid] = self.vault.keys.cell_cipher(self.vault.data_key(conn, sid))
            clear = [decrypt_cell(ciphers[sid], blob,
                                  f"{dataset.name}|{c.name}|{row_id}".encode())
                     if blob is not None else None
                     for c, blob in zip(encrypted, row[3 + len(plain):], strict=True)]
            batch.append([sid, *row[2:3 + len(plain)], *clear])
        order = ["sid", "rfp", *(plain_column(c.name) for c in plain),
                 *(plain_column(c.name) for c in encrypted)]
        conn.executemany(f"INSERT INTO _work ({', '.join(order)}) VALUES "
                         f"({', '.join('?' for _ in order)})", batch)
        return "_work"

    def _where(self, query: Query, columns: dict[str, ColumnSpec]) -> tuple[str, list[Any]]:
        clauses = ["sid IN (SELECT sid FROM temp._eligible)"]
        params: list[Any] = []
        for flt in query.filters:
            ident = f'"{plain_column(flt.column)}"'
            if flt.op in ("in", "not_in"):
                values = [_coerce(v, columns[flt.column]) for v in flt.value]  # type: ignore[union-attr]
                marks = ", ".join("?" for _ in values)
                clauses.append(f"{ident} {'NOT IN' if flt.op == 'not_in' else 'IN'} ({marks})")
                params.extend(values)
            else:
                clauses.append(f"{ident} {SQL_OPS[flt.op]} ?")
                params.append(_coerce(flt.value, columns[flt.column]))
        return " AND ".join(clauses), params

    def _aggregate(self, conn: sqlite3.Connection, source: str, query: Query,
                   columns: dict[str, ColumnSpec]) -> dict[tuple[Any, ...], _Group]:
        """One SQL pass grouped by (group keys, subject): per-subject partials (for the DP
        contribution bounds) and per-subject row fingerprints (for the overlap control).
        With a covering index on the first group-by column SQLite reads rows in this order
        from the index, so no sort is needed; only the needed aggregates are computed."""
        keys = [f'"{plain_column(g)}"' for g in query.group_by]
        numeric = sorted({m.column for m in query.measures
                          if m.column and m.aggregate != "quantile"})
        extremes = {m.column for m in query.measures if m.aggregate in ("min", "max")}
        # SUM(rfp): which rows of a subject were used (keyed 40-bit row fingerprints).
        aggs = ["COUNT(*)", "SUM(rfp)"]
        for name in numeric:
            col = f'"{plain_column(name)}"'
            aggs += [f"COUNT({col})", f"SUM({col})"]
            if name in extremes:
                aggs += [f"MIN({col})", f"MAX({col})"]
        where, params = self._where(query, columns)
        sql = (f"SELECT {', '.join([*keys, 'sid', *aggs])} FROM {source} WHERE {where} "
               f"GROUP BY {', '.join([*keys, 'sid'])}")
        groups: dict[tuple[Any, ...], _Group] = {}
        width = len(keys)
        for row in conn.execute(sql, params):
            key = row[:width]
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(stats={n: [0, 0.0, None, None] for n in numeric})
            sid, rows, rfp_sum = row[width:width + 3]
            group.rows += rows
            partials = [float(rows)]
            at = width + 3
            for name in numeric:
                n, total = row[at], row[at + 1] or 0
                stat = group.stats[name]
                stat[0] += n
                stat[1] += total
                at += 2
                if name in extremes:
                    low, high = row[at], row[at + 1]
                    at += 2
                    if low is not None:
                        stat[2] = low if stat[2] is None else min(stat[2], low)
                        stat[3] = high if stat[3] is None else max(stat[3], high)
                partials += [float(n), float(total)]
            group.subjects[sid] = partials
            group.fingerprints[sid] = (rows * 1_000_003 + rfp_sum) % FP_MOD
        return groups

    def _release(self, conn: sqlite3.Connection, query: Query, requester: str,
                 candidates: list[tuple[tuple[Any, ...], _Group]], now: datetime
                 ) -> tuple[list[tuple[Any, ...]], int]:
        """Overlap control over the groups that passed k-suppression (write phase)."""
        k = self.settings.k
        released, suppressed = [], 0
        for key, group in candidates:
            if not _releasable(conn, requester, query.dataset, group.fingerprints, k, now):
                suppressed += 1
                continue
            released.append(key)
        return released, suppressed

    def _values(self, conn: sqlite3.Connection, source: str, query: Query,
                columns: dict[str, ColumnSpec], key: tuple[Any, ...], group: _Group
                ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for measure in query.measures:
            if measure.aggregate == "count":
                values[measure.label] = (group.rows if measure.column is None
                                         else int(group.stats.get(measure.column, [0])[0]))
            elif measure.aggregate == "quantile":
                values[measure.label] = self._quantile(conn, source, query, columns, key,
                                                       measure.column or "", measure.q or 0.5)
            else:
                n, total, low, high = group.stats[measure.column or ""]
                values[measure.label] = {"sum": total, "min": low, "max": high,
                                         "avg": total / n if n else None}[measure.aggregate]
        return values

    def _quantile(self, conn: sqlite3.Connection, source: str, query: Query,
                  columns: dict[str, ColumnSpec], key: tuple[Any, ...], column: str,
                  q: float) -> float | None:
        where, params = self._where(query, columns)
        for name, value in zip(query.group_by, key, strict=True):
            where += f' AND "{plain_column(name)}" IS ?'
            params.append(value)
        col = f'"{plain_column(column)}"'
        values = [r[0] for r in conn.execute(
            f"SELECT {col} FROM {source} WHERE {where} AND {col} IS NOT NULL ORDER BY {col}",
            params)]
        if not values:
            return None
        # Linear interpolation between closest ranks (the "type 7" definition).
        pos = q * (len(values) - 1)
        low = int(pos)
        high = min(low + 1, len(values) - 1)
        return float(values[low] + (values[high] - values[low]) * (pos - low))

    # -- access log -----------------------------------------------------------------------------

    def _log(self, conn: sqlite3.Connection, query: Query | None, requester: str,
             now: datetime, outcome: str, reason: str, sids: list[int],
             grant_ids: list[str]) -> tuple[int, str]:
        refs = self.vault.refs_for_sids(conn, sids)
        body = {
            "time": iso(now), "node": self.node_did, "requester": requester,
            "purpose": query.purpose if query else None,
            "dataset": query.dataset if query else None,
            "grant_ids": sorted(grant_ids), "outcome": outcome, "reason": reason,
            "subject_count": len(refs), "subjects_digest": accesslog.subjects_digest(refs),
        }
        return accesslog.append(conn, body, sids, sorted(grant_ids))

    def log_refusal(self, raw_query: Any, requester: str, now: datetime,
                     exc: RequestError) -> None:
        try:
            query: Query | None = query_from_dict(raw_query)
        except RequestError:
            query = None
        grant_ids = list(query.grant_ids) if query else []

        def record(conn: sqlite3.Connection) -> None:
            # Only grant ids the node actually holds are linked, so a subject sees refusals
            # that named its grants, and made-up ids do not pollute the index.
            known = [g for g in grant_ids if conn.execute(
                "SELECT 1 FROM grants WHERE grant_id = ?", (g,)).fetchone()]
            self._log(conn, query, requester, now, "refused", exc.reason, [], known)

        self.vault.commit(record)


# -- helpers ------------------------------------------------------------------------------------

def _eligible(conn: sqlite3.Connection, grants: list[_GrantRow]) -> dict[str, list[int]]:
    """Fill temp._eligible with the sids bound to the grants' subjects (one lookup)."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS _eligible (sid INTEGER PRIMARY KEY)")
    conn.execute("DELETE FROM temp._eligible")
    subjects = sorted({g.subject for g in grants})
    by_subject: dict[str, list[int]] = {}
    for did, sid in conn.execute("SELECT did, sid FROM bindings WHERE did IN "
                                 "(SELECT value FROM json_each(?))", (json.dumps(subjects),)):
        by_subject.setdefault(did, []).append(sid)
    conn.executemany("INSERT OR IGNORE INTO temp._eligible (sid) VALUES (?)",
                     [(sid,) for sids in by_subject.values() for sid in sids])
    return by_subject


def _consent_version(conn: sqlite3.Connection) -> str:
    """Bumped by triggers whenever consent shrinks (revocation, unbinding, erasure)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'consent_version'").fetchone()
    return str(row[0]) if row else "0"


def _check_filter_value(flt: Filter, column: ColumnSpec) -> None:
    values = flt.value if isinstance(flt.value, tuple) else (flt.value,)
    for value in values:
        if column.numeric and not isinstance(value, int | float):
            raise InvalidRequest(f"column {column.name!r} is {column.type}: compare it with a "
                                 "number", reason="bad-filter")


def _coerce(value: Any, column: ColumnSpec) -> Any:
    return value if column.numeric else str(value)


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, str(v)) for v in key)


def _pack(members: dict[int, int]) -> tuple[bytes, str]:
    flat = array.array("q", [v for sid in sorted(members) for v in (sid, members[sid])])
    packed = flat.tobytes()
    return zlib.compress(packed), hashlib.sha256(packed).hexdigest()


def _unpack(blob: bytes) -> dict[int, int]:
    flat = array.array("q", zlib.decompress(blob))
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _changed_subjects(a: dict[int, int], b: dict[int, int]) -> int:
    """Subjects whose contribution differs: present in one set only, or with other rows."""
    return len(a.keys() ^ b.keys()) + sum(1 for sid in a.keys() & b.keys() if a[sid] != b[sid])


def _releasable(conn: sqlite3.Connection, requester: str, dataset: str,
                members: dict[int, int], k: int, now: datetime) -> bool:
    """Query-set overlap control; records the set when it is released.

    A set is withheld if an answer set already released to this requester on this dataset
    differs from it in the rows of 1..k-1 subjects: the difference of the two answers would
    describe fewer than k people. Sets whose sizes differ by k or more cannot, so only
    near-sized sets are compared. A set released before needs no comparison: every set
    released since was compared with it then (the table is append-only).
    """
    blob, digest = _pack(members)
    if conn.execute("SELECT 1 FROM released_sets WHERE requester = ? AND dataset = ? "
                    "AND digest = ?", (requester, dataset, digest)).fetchone():
        return True
    size = len(members)
    for other in conn.execute(
            "SELECT members FROM released_sets WHERE requester = ? AND dataset = ? "
            "AND size BETWEEN ? AND ?", (requester, dataset, size - k + 1, size + k - 1)):
        if 0 < _changed_subjects(members, _unpack(other[0])) < k:
            return False
    conn.execute("INSERT INTO released_sets (requester, dataset, size, digest, members, "
                 "released_at) VALUES (?, ?, ?, ?, ?, ?)",
                 (requester, dataset, size, digest, blob, iso(now)))
    return True


def _laplace(value: float, scale: float) -> float:
    measurement = dp.m.make_laplace(dp.atom_domain(T=float, nan=False),
                                    dp.absolute_distance(T=float), scale=scale)
    return float(measurement(float(value)))


def _noisy_values(query: Query, dataset: DatasetSpec, columns: dict[str, ColumnSpec],
                  group: _Group, epsilon: float) -> dict[str, Any]:
    """Laplace mechanism per measure; epsilon split evenly (avg costs a sum and a count)."""
    parts = sum(2 if m.aggregate == "avg" else 1 for m in query.measures)
    eps = epsilon / parts
    cap = dataset.max_rows_per_subject
    numeric = sorted({m.column for m in query.measures if m.column and m.aggregate != "quantile"})
    values: dict[str, Any] = {}
    for measure in query.measures:
        if measure.column is None or measure.aggregate == "count":
            index = 0 if measure.column is None else 1 + 2 * numeric.index(measure.column)
            count = sum(min(p[index], cap) for p in group.subjects.values())
            values[measure.label] = max(0, round(_laplace(count, cap / eps)))
            continue
        column = columns[measure.column]
        if column.bounds is None:
            raise PreconditionFailed(
                f"column {column.name!r} has no bounds in the data map, so a private sum "
                "cannot be calibrated; the operator adds bounds = [low, high]",
                reason="dp-bounds")
        low, high = column.bounds
        index = 1 + 2 * numeric.index(measure.column)
        lo_cap, hi_cap = cap * min(low, 0.0), cap * max(high, 0.0)
        total = sum(min(max(p[index + 1], lo_cap), hi_cap) for p in group.subjects.values())
        sensitivity = cap * max(abs(low), abs(high))
        if measure.aggregate == "sum":
            values[measure.label] = _laplace(total, sensitivity / eps)
        else:
            count = sum(min(p[index], cap) for p in group.subjects.values())
            noisy_count = max(1.0, _laplace(count, cap / eps))
            noisy = _laplace(total, sensitivity / eps) / noisy_count
            values[measure.label] = min(max(noisy, low), high)
    return values
