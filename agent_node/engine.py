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
import threading
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
from agent_node.vault import (
    Batch,
    DurableReplayGuard,
    Nonce,
    Vault,
    encrypted_column,
    iso,
    plain_column,
    table_name,
)
from agent_node.vaultcrypto import decrypt_cell
from consent.errors import ReplayError, UnknownPurpose
from consent.grants import check_purpose

dp.enable_features("contrib")

SQL_OPS = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
MIN_K = 2
EPS_TOLERANCE = 1e-9
FP_MOD = 2**62
FP_ROWS = 1_000_003  # per-subject fingerprint: rows * FP_ROWS + sum of row fingerprints
MAX_ATTEMPTS = 5
VIEW_CACHE_SIZE = 1024
VIEW_MEMO_SIZE = 256
RELEASED_CACHE_SIZE = 65536
DENSE_FRACTION = 20  # eligible subjects >= 1/20 of all: filter first, then check consent


@dataclass(frozen=True)
class EngineSettings:
    k: int = 5
    default_epsilon: float = 1.0

    def __post_init__(self) -> None:
        if self.k < MIN_K:
            raise ValueError(f"k must be at least {MIN_K}")


@dataclass
class _Group:
    """One group's aggregates, from the two-level SQL of ``_aggregate``."""

    subjects: int  # distinct subjects (k-suppression)
    rows: int
    sids: list[int]  # in the order SQL listed them
    fingerprints: list[int]  # per subject: which of its rows were used (overlap control)
    stats: dict[str, list[Any]] = field(default_factory=dict)  # column -> [n, sum, min, max]
    capped: dict[str, float] = field(default_factory=dict)  # DP: contribution-bounded sums

    def members(self) -> dict[int, int]:
        return dict(zip(self.sids, self.fingerprints, strict=True))


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
    limited: bool = False  # carries max_queries


@dataclass(frozen=True)
class _ConsentView:
    """A requester's grants for one purpose, their subjects' sids and subject refs, as of
    one pair of consent versions. Budgets are not part of it: they are read live."""

    versions: str
    grants: tuple[tuple[Any, ...], ...]  # (id, subject, scopes, nbf, exp, max_q, dp_eps)
    sids: dict[str, list[int]]  # subject DID -> sids
    refs: dict[int, str]  # sid -> subject ref
    #: Values derived from the above alone (active grants per scope set until the next
    #: validity boundary, eligible sids, event members), so they live exactly as long.
    memo: dict[Any, Any] = field(default_factory=dict, compare=False)

    def remember(self, key: Any, value: Any) -> Any:
        if len(self.memo) >= VIEW_MEMO_SIZE:
            self.memo.clear()
        self.memo[key] = value
        return value


@dataclass(frozen=True)
class _Plan:
    """What the read phase found, handed to the write phase."""

    consent_version: str
    used_grants: list[_GrantRow]
    epsilon: float | None
    used_sids: list[int]
    candidates: list[tuple[tuple[Any, ...], _Group]]  # groups of >= k subjects, in key order
    digests: list[str]  # per candidate: digest of its (subject, fingerprint) set
    blobs: list[bytes | None]  # per candidate: packed members, None if released before
    suppressed: int  # groups already withheld by k
    exact: dict[tuple[Any, ...], dict[str, Any]]  # exact values (no DP budget)
    event: accesslog.PreparedEvent


class QueryEngine:
    def __init__(self, vault: Vault, datamap: DataMap, node_did: str,
                 settings: EngineSettings) -> None:
        self.vault, self.datamap, self.node_did, self.settings = vault, datamap, node_did, settings
        self._views: dict[tuple[str, str], _ConsentView] = {}
        self._views_lock = threading.Lock()
        self._local = threading.local()  # which eligible set this thread's temp table holds
        #: (requester, dataset, digest) of answer sets known to be durably released. Releases
        #: are final, so an entry never goes stale; other processes' releases are found in SQL.
        self._released: set[tuple[str, str, str]] = set()

    # -- entry point --------------------------------------------------------------------------

    def run(self, raw_query: Any, requester: str, now: datetime | None = None,
            nonce: Nonce | None = None) -> dict[str, Any]:
        """Answer or refuse; either way one access event is appended. ``nonce`` (from
        ``DurableReplayGuard``) is spent in the same transaction as that event."""
        now = now or datetime.now(UTC)
        try:
            query = query_from_dict(raw_query)
            return self._answer(query, requester, now, nonce)
        except RequestError as exc:
            self.log_refusal(raw_query, requester, now, exc, nonce)
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
                scopes: set[str], now: datetime, versions: str | None = None
                ) -> list[_GrantRow]:
        ts = now.timestamp()
        if query.grant_ids:
            return [self._named_grant(conn, gid, query, requester, scopes, ts)
                    for gid in dict.fromkeys(query.grant_ids)]
        view = self._view(conn, requester, query.purpose, versions)
        active = _active(view, frozenset(scopes), ts)
        budgeted = [g[0] for g, row in active if row is None]
        live = {r[0]: r[1:] for r in conn.execute(
            "SELECT grant_id, queries_used, epsilon_spent FROM grant_usage WHERE grant_id IN "
            "(SELECT value FROM json_each(?))", (json.dumps(budgeted),))} if budgeted else {}
        grants = []
        for (gid, subject, granted, _, _, max_q, eps), row in active:
            if row is not None:  # no budget: nothing live to read
                grants.append(row)
                continue
            used, spent = live.get(gid, (0, 0.0))
            if max_q is None or used < max_q:
                grants.append(_GrantRow(gid, subject, granted, eps, spent, max_q is not None))
        if not grants:
            raise PermissionDenied(
                "no active grant at this node lets this requester use "
                f"{', '.join(sorted(scopes))} data for {query.purpose!r}; ask customers for a "
                "grant covering that purpose and scope", reason="no-grant")
        return grants

    def _view(self, conn: sqlite3.Connection, requester: str, purpose: str,
              versions: str | None = None) -> _ConsentView:
        """The cached consent view, rebuilt when a grant or binding was added or removed
        (trigger-maintained ``versions`` in ``meta``, read in this snapshot)."""
        versions = versions or _versions(conn)
        key = (requester, purpose)
        view = self._views.get(key)
        if view is not None and view.versions == versions:
            return view
        grants = tuple(
            (r[0], r[1], frozenset(r[2].split(",")), r[3], r[4], r[5], r[6])
            for r in conn.execute(
                "SELECT grant_id, subject, scopes, not_before, expires, max_queries, dp_epsilon "
                "FROM grants WHERE requester = ? AND purpose = ? AND revoked_at IS NULL",
                (requester, purpose)))
        sids = _bound_sids(conn, {g[1] for g in grants})
        view = _ConsentView(versions, grants, sids,
                            _subject_refs(conn, [s for v in sids.values() for s in v]))
        with self._views_lock:
            if len(self._views) >= VIEW_CACHE_SIZE:
                self._views.clear()
            self._views[key] = view
        return view

    def _named_grant(self, conn: sqlite3.Connection, gid: str, query: Query, requester: str,
                     scopes: set[str], ts: float) -> _GrantRow:
        row = conn.execute(
            "SELECT subject, requester, purpose, scopes, not_before, expires, revoked_at, "
            "max_queries, COALESCE(u.queries_used, 0), dp_epsilon, COALESCE(u.epsilon_spent, 0) "
            "FROM grants g LEFT JOIN grant_usage u USING (grant_id) WHERE grant_id = ?",
            (gid,)).fetchone()
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
        return _GrantRow(gid, subject, frozenset(granted.split(",")), eps, spent,
                         max_q is not None)

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

    def _answer(self, query: Query, requester: str, now: datetime,
                nonce: Nonce | None) -> dict[str, Any]:
        dataset, columns, scopes = self._validate(query)
        for _ in range(MAX_ATTEMPTS):
            plan = self._read(query, dataset, columns, scopes, requester, now)
            try:
                seq, released, suppressed = self.vault.commit(
                    lambda conn, batch, plan=plan: self._commit(conn, batch, plan, query,
                                                                requester, now, nonce))
            except _Stale:
                continue  # consent or a budget changed under the read: answer afresh
            return self._reply(plan, query, dataset, columns, requester, now, seq, released,
                               suppressed)
        raise Contended("grants at this node changed while the query ran; retry it",
                        reason="contended")

    def _read(self, query: Query, dataset: DatasetSpec, columns: dict[str, ColumnSpec],
              scopes: set[str], requester: str, now: datetime) -> _Plan:
        """The read phase, on a consistent snapshot: grants, consent filter, aggregates,
        k-suppression, exact values and the prepared access event. Nothing is written to the
        vault here (only this connection's temp tables)."""
        with self.vault.snapshot() as conn:
            # One statement for what the snapshot must start with (each costs ~40 us).
            layout, version, versions, subjects = _snapshot_state(conn, dataset.name)
            if layout != self.vault.layout(dataset):
                raise PreconditionFailed(f"dataset {dataset.name!r} has not been synced yet; "
                                         "the operator runs 'sov-node sync'", reason="not-synced")
            grants = self._grants(conn, query, requester, scopes, now, versions)
            grants, epsilon = self._apply_dp_budget(query, grants)
            if epsilon is not None:
                _check_dp_bounds(query, columns)
            owners = self._eligible(conn, query, requester, grants, versions)
            # Many consenting subjects: read the rows the filters select and keep theirs.
            # Few: seek each one's rows through the subject index.
            dense = len(owners) * DENSE_FRACTION >= subjects
            source = self._source(conn, dataset, columns)
            groups = self._aggregate(conn, source, query, dataset, columns, epsilon, dense)
            k = self.settings.k
            candidates = [(key, groups[key]) for key in sorted(groups, key=_sort_key)
                          if groups[key].subjects >= k]
            exact = {key: self._values(conn, source, query, columns, key, group, dense)
                     for key, group in candidates} if epsilon is None else {}
            digests, blobs = _digests(conn, requester, query.dataset, candidates,
                                      self._released)
            # Used = the subjects with rows matching the query (all groups, also those then
            # withheld: whether a group reaches k is computed from their rows), never every
            # consenting subject; their grants are the ones named and debited.
            used = sorted({sid for g in groups.values() for sid in g.sids})
            used_subjects = {subject for sid in used for subject in owners.get(sid, ())}
            used_grants = [g for g in grants if g.subject in used_subjects]
            event = self._event(conn, query, requester, now, "answered", "ok", used,
                                [g.grant_id for g in used_grants])
        return _Plan(version, used_grants, epsilon, used, candidates, digests, blobs,
                     len(groups) - len(candidates), exact, event)

    def _commit(self, conn: sqlite3.Connection, batch: Batch, plan: _Plan, query: Query,
                requester: str, now: datetime, nonce: Nonce | None
                ) -> tuple[int, list[tuple[Any, ...]], int]:
        """The write phase, one job of a group-commit batch: confirm that consent did not
        shrink since the read, debit budgets atomically, apply the overlap control and
        append the access event. Every check comes before the first write (a refusal leaves
        nothing behind); writes that cannot fail a check are deferred to the batch's end."""
        version = batch.memo.get("consent_version")
        if version is None:  # only other connections change consent, never this batch
            version = batch.memo["consent_version"] = _consent_version(conn)
        if version != plan.consent_version:
            raise _Stale
        limited = [g.grant_id for g in plan.used_grants if g.limited or g.dp_epsilon]
        spend = plan.epsilon or 0.0
        _check_budgets(conn, limited, spend)
        if nonce is not None:  # the last check and the first write: spent with the event
            _spend(conn, nonce)
        released, suppressed = [], plan.suppressed
        for (key, group), digest, blob in zip(plan.candidates, plan.digests, plan.blobs,
                                              strict=True):
            # blob None: the snapshot showed this very set released, and releases are final.
            if blob is None or _releasable(conn, requester, query.dataset, group, digest,
                                           blob, self.settings.k, now):
                released.append(key)
                if blob is not None:
                    batch.after_commit(lambda d=digest: self._remember_release(
                        requester, query.dataset, d))
            else:
                suppressed += 1
        # Only grants with a budget keep a counter (narrow grant_usage rows); the others'
        # use is counted from the access log's grant sets when a wallet asks.
        _debit(conn, [g.grant_id for g in plan.used_grants if g.dp_epsilon], spend)
        _debit(conn, [g.grant_id for g in plan.used_grants if g.limited and not g.dp_epsilon],
               0.0)
        seq, _ = accesslog.append_batched(conn, batch, plan.event, plan.used_sids,
                                          [g.grant_id for g in plan.used_grants])
        return seq, released, suppressed

    def _remember_release(self, requester: str, dataset: str, digest: str) -> None:
        if len(self._released) >= RELEASED_CACHE_SIZE:
            self._released.clear()
        self._released.add((requester, dataset, digest))

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

    def _eligible(self, conn: sqlite3.Connection, query: Query, requester: str,
                  grants: list[_GrantRow], versions: str | None = None) -> dict[int, list[str]]:
        """Fill temp._eligible with the sids bound to the grants' subjects (the consent
        filter); skipped when this thread's temp table already holds exactly that set.
        Returns each eligible sid's subject DIDs (a customer may be bound to several)."""
        if query.grant_ids:
            owners, listed, marker = _eligible_set(
                _bound_sids(conn, {g.subject for g in grants}))
        else:
            view = self._view(conn, requester, query.purpose, versions)
            key = ("eligible", tuple(g.subject for g in grants))
            found = view.memo.get(key)
            if found is None:
                found = view.remember(key, _eligible_set(
                    {g.subject: view.sids.get(g.subject, []) for g in grants}))
            owners, listed, marker = found
        if getattr(self._local, "eligible", None) != marker:
            self._local.eligible = None  # unknown until the snapshot commits
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS _eligible (sid INTEGER PRIMARY KEY)")
            conn.execute("DELETE FROM temp._eligible")
            conn.execute("INSERT INTO temp._eligible (sid) SELECT value FROM json_each(?)",
                         (listed,))
            self.vault.after_snapshot(conn, lambda: setattr(self._local, "eligible", marker))
        return owners

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

    def _where(self, query: Query, columns: dict[str, ColumnSpec], dense: bool
               ) -> tuple[str, list[Any]]:
        # "+sid" keeps SQLite from seeking every eligible subject in the index: with a dense
        # eligible set, a range of a filter column's index (or one scan) costs less.
        clauses = [f"{'+sid' if dense else 'sid'} IN (SELECT sid FROM temp._eligible)"]
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
                   dataset: DatasetSpec, columns: dict[str, ColumnSpec],
                   epsilon: float | None, dense: bool) -> dict[tuple[Any, ...], _Group]:
        """Two-level SQL, one pass over the data: the inner level groups by (group keys,
        subject) and yields per-subject partials and row fingerprints; the outer level
        sums them per group, counts subjects, lists (subject, fingerprint) pairs for the
        overlap control and, under a DP budget, sums the contribution-bounded partials.
        With a covering index on the first group-by column, the inner level reads the index
        in (group, subject) order: no sort, no table lookups."""
        keys = [f'"{plain_column(g)}"' for g in query.group_by]
        outer_keys = [f"k{i}" for i in range(len(keys))]
        numeric = sorted({m.column for m in query.measures
                          if m.column and m.aggregate != "quantile"})
        extremes = {m.column for m in query.measures if m.aggregate in ("min", "max")}
        cap = dataset.max_rows_per_subject
        # The row-fingerprint sum says which rows of a subject were used (keyed, 40-bit).
        inner = [*(f"{k} AS {o}" for k, o in zip(keys, outer_keys, strict=True)), "sid",
                 "COUNT(*) AS r", "SUM(rfp) AS f"]
        outer = [*outer_keys, "COUNT(*)", "SUM(r)", "GROUP_CONCAT(sid)",
                 f"GROUP_CONCAT(r * {FP_ROWS} + f)"]
        if epsilon is not None:
            outer.append(f"SUM(MIN(r, {cap}))")
        for i, name in enumerate(numeric):
            col = f'"{plain_column(name)}"'
            inner += [f"COUNT({col}) AS n{i}", f"SUM({col}) AS s{i}"]
            outer += [f"SUM(n{i})", f"SUM(s{i})"]
            if name in extremes:
                inner += [f"MIN({col}) AS lo{i}", f"MAX({col}) AS hi{i}"]
                outer += [f"MIN(lo{i})", f"MAX(hi{i})"]
            if epsilon is not None:
                outer.append(f"SUM(MIN(n{i}, {cap}))")
                bounds = columns[name].bounds
                if bounds is not None:
                    low, high = (cap * min(bounds[0], 0.0), cap * max(bounds[1], 0.0))
                    outer.append(f"TOTAL(MAX(MIN(COALESCE(s{i}, 0), {high!r}), {low!r}))")
        where, params = self._where(query, columns, dense)
        group_inner = ", ".join([*keys, "sid"])
        sql = (f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM {source} "
               f"WHERE {where} GROUP BY {group_inner})"
               + (f" GROUP BY {', '.join(outer_keys)}" if keys else " HAVING COUNT(*) > 0"))
        groups: dict[tuple[Any, ...], _Group] = {}
        width = len(keys)
        for row in conn.execute(sql, params):
            subjects, rows, sids, fps = row[width:width + 4]
            group = _Group(subjects, rows, [int(s) for s in sids.split(",")],
                           [int(f) % FP_MOD for f in fps.split(",")])
            at = width + 4
            if epsilon is not None:
                group.capped["rows"] = row[at]
                at += 1
            for name in numeric:
                stat = [row[at], row[at + 1] or 0, None, None]
                at += 2
                if name in extremes:
                    stat[2], stat[3] = row[at], row[at + 1]
                    at += 2
                if epsilon is not None:
                    group.capped[f"n:{name}"] = row[at]
                    at += 1
                    if columns[name].bounds is not None:
                        group.capped[f"s:{name}"] = row[at]
                        at += 1
                group.stats[name] = stat
            groups[tuple(row[:width])] = group
        return groups

    def _values(self, conn: sqlite3.Connection, source: str, query: Query,
                columns: dict[str, ColumnSpec], key: tuple[Any, ...], group: _Group,
                dense: bool) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for measure in query.measures:
            if measure.aggregate == "count":
                values[measure.label] = (group.rows if measure.column is None
                                         else int(group.stats.get(measure.column, [0])[0]))
            elif measure.aggregate == "quantile":
                values[measure.label] = self._quantile(conn, source, query, columns, key,
                                                       measure.column or "", measure.q or 0.5,
                                                       dense)
            else:
                n, total, low, high = group.stats[measure.column or ""]
                values[measure.label] = {"sum": total, "min": low, "max": high,
                                         "avg": total / n if n else None}[measure.aggregate]
        return values

    def _quantile(self, conn: sqlite3.Connection, source: str, query: Query,
                  columns: dict[str, ColumnSpec], key: tuple[Any, ...], column: str,
                  q: float, dense: bool) -> float | None:
        where, params = self._where(query, columns, dense)
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

    def _event(self, conn: sqlite3.Connection, query: Query | None, requester: str,
               now: datetime, outcome: str, reason: str, sids: list[int],
               grant_ids: list[str]) -> accesslog.PreparedEvent:
        """The access event, canonicalised outside the write transaction. It names the grants
        and subjects used by their sets' sizes and Merkle roots (accesslog.set_commitment),
        so no customer's event shows another customer's grant ids."""
        view = self._views.get((requester, query.purpose)) if query else None
        key = ("event", tuple(sids), tuple(grant_ids))
        found = view.memo.get(key) if view is not None else None
        if found is None:
            known = view.refs if view is not None else {}
            missing = [sid for sid in sids if sid not in known]
            refs = [known[sid] for sid in sids if sid in known]
            if missing:
                refs += list(_subject_refs(conn, missing).values())
            found = (accesslog.set_commitment(refs), accesslog.set_commitment(grant_ids))
            if view is not None and not missing:  # only what the view alone determines
                view.remember(key, found)
        (subject_count, subjects_root), (grant_count, grants_root) = found
        return accesslog.prepare({
            "v": accesslog.EVENT_VERSION, "time": iso(now), "node": self.node_did,
            "requester": requester, "purpose": query.purpose if query else None,
            "dataset": query.dataset if query else None, "outcome": outcome, "reason": reason,
            "grant_count": grant_count, "grants_root": grants_root,
            "subject_count": subject_count, "subjects_root": subjects_root,
        })

    def log_refusal(self, raw_query: Any, requester: str, now: datetime,
                    exc: RequestError, nonce: Nonce | None = None) -> None:
        try:
            query: Query | None = query_from_dict(raw_query)
        except RequestError:
            query = None
        grant_ids = list(query.grant_ids) if query else []

        def record(conn: sqlite3.Connection, batch: Batch) -> None:
            # Only grant ids the node actually holds are linked, so a subject sees refusals
            # that named its grants, and made-up ids do not pollute the index.
            known = [g for g in grant_ids if conn.execute(
                "SELECT 1 FROM grants WHERE grant_id = ?", (g,)).fetchone()]
            event = self._event(conn, query, requester, now, "refused", exc.reason, [], known)
            if nonce is not None:  # spent by the refusal too (unless that was the refusal)
                conn.execute("INSERT OR IGNORE INTO replay_nonces (nonce, expires) "
                             "VALUES (?, ?)", (nonce.value, nonce.expires))
            accesslog.append_batched(conn, batch, event, [], sorted(known))

        self.vault.commit(record)


# -- helpers ------------------------------------------------------------------------------------

def _eligible_set(by_subject: dict[str, list[int]]) -> tuple[dict[int, list[str]], str, bytes]:
    """(sid -> subject DIDs, the sids as a JSON list, its digest) for the consent filter."""
    owners: dict[int, list[str]] = {}
    for subject, sids in by_subject.items():
        for sid in sids:
            owners.setdefault(sid, []).append(subject)
    listed = json.dumps(sorted(owners))
    return owners, listed, hashlib.sha256(listed.encode()).digest()


def _active(view: _ConsentView, scopes: frozenset[str], ts: float
            ) -> list[tuple[tuple[Any, ...], _GrantRow | None]]:
    """The view's grants valid at ``ts`` covering ``scopes``, each with its ready row when it
    has no budget (None: budgets are read live). Kept in the view until the next moment a
    grant becomes valid or expires."""
    found = view.memo.get(("active", scopes))
    if found is not None and found[0] <= ts < found[1]:
        return found[2]  # type: ignore[no-any-return]
    active, until = [], float("inf")
    for grant in view.grants:
        gid, subject, granted, nbf, exp, max_q, eps = grant
        until = min(until, *(t for t in (nbf, exp) if t > ts), float("inf"))
        if nbf <= ts < exp and scopes <= granted:
            budgeted = max_q is not None or bool(eps)
            active.append((grant, None if budgeted
                           else _GrantRow(gid, subject, granted, eps, 0.0, False)))
    view.remember(("active", scopes), (ts, until, active))
    return active


def _versions(conn: sqlite3.Connection) -> str:
    """Both consent versions: grants or bindings added, and consent removed."""
    return _snapshot_state(conn, "")[2]


def _snapshot_state(conn: sqlite3.Connection, dataset: str
                    ) -> tuple[str | None, str, str, int]:
    """(the dataset's synced layout, the consent version, both consent versions, about how
    many subjects the vault holds: the largest sid, read in O(log n); only the query plan
    depends on it, never an answer)."""
    layout, removed, added, subjects = conn.execute(
        "SELECT (SELECT layout FROM datasets WHERE name = ?), "
        "(SELECT value FROM meta WHERE key = 'consent_version'), "
        "(SELECT value FROM meta WHERE key = 'grants_version'), "
        "(SELECT MAX(sid) FROM subjects)", (dataset,)).fetchone()
    removed = "0" if removed is None else str(removed)
    return layout, removed, f"{removed}|{added}", subjects or 0


def _consent_version(conn: sqlite3.Connection) -> str:
    """Bumped by triggers whenever consent shrinks (revocation, unbinding, erasure)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'consent_version'").fetchone()
    return str(row[0]) if row else "0"


def _bound_sids(conn: sqlite3.Connection, subjects: set[str]) -> dict[str, list[int]]:
    by_subject: dict[str, list[int]] = {}
    for did, sid in conn.execute("SELECT did, sid FROM bindings WHERE did IN "
                                 "(SELECT value FROM json_each(?))",
                                 (json.dumps(sorted(subjects)),)):
        by_subject.setdefault(did, []).append(sid)
    return by_subject


def _subject_refs(conn: sqlite3.Connection, sids: list[int]) -> dict[int, str]:
    return dict(conn.execute("SELECT sid, subject_ref FROM subjects WHERE sid IN "
                             "(SELECT value FROM json_each(?))", (json.dumps(sids),)))


def _check_budgets(conn: sqlite3.Connection, grant_ids: list[str], epsilon: float) -> None:
    """Inside the write transaction: every limited grant still has a query (and ``epsilon``)
    left, else a concurrent query spent it and the query is read again (and then refused or
    answered without that grant)."""
    if not grant_ids:
        return
    for _, used, max_q, spent, eps in conn.execute(
            "SELECT grant_id, COALESCE(u.queries_used, 0), max_queries, "
            "COALESCE(u.epsilon_spent, 0), dp_epsilon FROM grants g LEFT JOIN grant_usage u "
            "USING (grant_id) WHERE grant_id IN (SELECT value FROM json_each(?))",
            (json.dumps(grant_ids),)):
        if max_q is not None and used >= max_q:
            raise _Stale
        if eps and spent + epsilon > eps + EPS_TOLERANCE:
            raise _Stale


def _debit(conn: sqlite3.Connection, grant_ids: list[str], epsilon: float) -> None:
    """Debit one query and ``epsilon`` from each budgeted grant (checked by
    ``_check_budgets`` earlier in the same transaction)."""
    if grant_ids:
        conn.execute("INSERT INTO grant_usage (grant_id, queries_used, epsilon_spent) "
                     "SELECT value, 1, ? FROM json_each(?) WHERE true "
                     "ON CONFLICT (grant_id) DO UPDATE SET queries_used = queries_used + 1, "
                     "epsilon_spent = epsilon_spent + excluded.epsilon_spent",
                     (epsilon, json.dumps(grant_ids)))


class Replayed(RequestError):
    """Another process (or this one before a restart) already answered this nonce."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "replayed-nonce"


def _spend(conn: sqlite3.Connection, nonce: Nonce) -> None:
    try:
        DurableReplayGuard.record(conn, nonce)
    except ReplayError as exc:
        raise Replayed(f"{exc}; seal a new request", reason="replayed-nonce") from None


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


def _packed(members: dict[int, int]) -> bytes:
    return array.array("q", [v for sid in sorted(members) for v in (sid, members[sid])]).tobytes()


def _unpack(blob: bytes) -> dict[int, int]:
    flat = array.array("q", zlib.decompress(blob))
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _changed_subjects(a: dict[int, int], b: dict[int, int]) -> int:
    """Subjects whose contribution differs: present in one set only, or with other rows."""
    return len(a.keys() ^ b.keys()) + sum(1 for sid in a.keys() & b.keys() if a[sid] != b[sid])


def _digests(conn: sqlite3.Connection, requester: str, dataset: str,
             candidates: list[tuple[tuple[Any, ...], _Group]],
             released: set[tuple[str, str, str]]) -> tuple[list[str], list[bytes | None]]:
    """Per candidate group: the SHA-256 of its sorted (subject, fingerprint) pairs, and the
    compressed pairs unless the same set is known released (``released``, else this
    snapshot)."""
    packed = [_packed(group.members()) for _, group in candidates]
    digests = [hashlib.sha256(p).hexdigest() for p in packed]
    known = {d for d in digests if (requester, dataset, d) in released}
    unknown = [d for d in digests if d not in known]
    if unknown:
        for (digest,) in conn.execute(
                "SELECT digest FROM released_sets WHERE requester = ? AND dataset = ? AND "
                "digest IN (SELECT value FROM json_each(?))",
                (requester, dataset, json.dumps(unknown))):
            known.add(digest)
            released.add((requester, dataset, digest))  # committed: this snapshot shows it
    blobs = [None if d in known else zlib.compress(p) for d, p in zip(digests, packed,
                                                                      strict=True)]
    return digests, blobs


def _releasable(conn: sqlite3.Connection, requester: str, dataset: str, group: _Group,
                digest: str, blob: bytes | None, k: int, now: datetime) -> bool:
    """Query-set overlap control (write phase); records the set when it is released.

    A set is withheld if an answer set already released to this requester on this dataset
    differs from it in the rows of 1..k-1 subjects: the difference of the two answers would
    describe fewer than k people. Sets whose sizes differ by k or more cannot, so only
    near-sized sets are compared. A set released before needs no comparison: every set
    released since was compared with it then (the table is append-only).
    """
    if conn.execute("SELECT 1 FROM released_sets WHERE requester = ? AND dataset = ? "
                    "AND digest = ?", (requester, dataset, digest)).fetchone():
        return True
    members = group.members()
    size = len(members)
    for other in conn.execute(
            "SELECT members FROM released_sets WHERE requester = ? AND dataset = ? "
            "AND size BETWEEN ? AND ?", (requester, dataset, size - k + 1, size + k - 1)):
        if 0 < _changed_subjects(members, _unpack(other[0])) < k:
            return False
    conn.execute("INSERT INTO released_sets (requester, dataset, size, digest, members, "
                 "released_at) VALUES (?, ?, ?, ?, ?, ?)",
                 (requester, dataset, size, digest,
                  blob if blob is not None else zlib.compress(_packed(members)), iso(now)))
    return True


def _laplace(value: float, scale: float) -> float:
    measurement = dp.m.make_laplace(dp.atom_domain(T=float, nan=False),
                                    dp.absolute_distance(T=float), scale=scale)
    return float(measurement(float(value)))


def _check_dp_bounds(query: Query, columns: dict[str, ColumnSpec]) -> None:
    for measure in query.measures:
        if measure.aggregate in ("sum", "avg") and columns[measure.column or ""].bounds is None:
            raise PreconditionFailed(
                f"column {measure.column!r} has no bounds in the data map, so a private sum "
                "cannot be calibrated; the operator adds bounds = [low, high]",
                reason="dp-bounds")


def _noisy_values(query: Query, dataset: DatasetSpec, columns: dict[str, ColumnSpec],
                  group: _Group, epsilon: float) -> dict[str, Any]:
    """Laplace mechanism per measure on contribution-bounded sums (each subject counts at
    most ``max_rows_per_subject`` rows, each value clamped to the column's bounds);
    epsilon split evenly (avg costs a sum and a count)."""
    parts = sum(2 if m.aggregate == "avg" else 1 for m in query.measures)
    eps = epsilon / parts
    cap = dataset.max_rows_per_subject
    values: dict[str, Any] = {}
    for measure in query.measures:
        if measure.column is None or measure.aggregate == "count":
            count = group.capped["rows" if measure.column is None else f"n:{measure.column}"]
            values[measure.label] = max(0, round(_laplace(count, cap / eps)))
            continue
        low, high = columns[measure.column].bounds or (0.0, 0.0)
        total = group.capped[f"s:{measure.column}"]
        sensitivity = cap * max(abs(low), abs(high))
        if measure.aggregate == "sum":
            values[measure.label] = _laplace(total, sensitivity / eps)
        else:
            count = group.capped[f"n:{measure.column}"]
            noisy_count = max(1.0, _laplace(count, cap / eps))
            noisy = _laplace(total, sensitivity / eps) / noisy_count
            values[measure.label] = min(max(noisy, low), high)
    return values
