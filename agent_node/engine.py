"""The consent-scoped aggregate query engine.

A validated ``Query`` is compiled to parameterised SQL over the vault: identifiers only from
the data map, values only as ``?`` parameters, operators from a whitelist. Rows are restricted
to the subjects whose active grants cover this requester, this purpose and every scope the
query touches (the consent filter). Answers are made in one of two modes (``privacy``):

- ``dp`` (the default): differential privacy per customer (``agent_node.privacy``, OpenDP).
  Each customer's contribution is bounded (rows per group, values clamped to the data map's
  bounds, groups per customer); group keys are released by DP partition selection unless
  the data map declares them public; every value carries its noise's 95 % interval. Every
  customer in the consent filter whose grant has budget left is read and debited the
  query's epsilon, whatever the filters match, in the same transaction as the access
  event; a grant whose budget is too small is left out (and named in the event).
- ``threshold``: exact count, sum and avg of groups with at least k distinct subjects, with
  the query-set overlap control (a set differing from one already released to the same
  requester by 1..k-1 subjects is withheld). Weaker: trackers defeat it (README).

An answer holds group keys and aggregates only, never a row, and never a count of withheld
groups, consenting or left-out customers.

A query runs in two phases. The read phase (grants, budgets, consent filter, aggregation,
noise or k) runs on a snapshot of the vault, concurrently with other queries. The write phase
runs in the vault's group-committed write transaction (``Vault.commit``), one query after
another: it confirms that consent has not shrunk since the snapshot (a trigger-maintained
version; otherwise the query is read again), checks and debits query and privacy budgets
exactly (integer micro-epsilon; a budget spent concurrently makes the query read again, and
then leave that grant out), applies the overlap control (threshold mode) and appends the
access event. The answer leaves only after that transaction is durably committed.
"""

from __future__ import annotations

import array
import functools
import hashlib
import itertools
import json
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any, cast

import grpc

from agent_node import accesslog, grantstore, nonces, privacy, releases, scoring, spend
from agent_node.datamap import ColumnSpec, DataMap, DatasetSpec
from agent_node.errors import (
    BudgetExhausted,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    RequestError,
)
from agent_node.nonces import Nonce
from agent_node.query import GRANT_RE, MAX_GRANT_IDS, Filter, Query, query_from_dict
from agent_node.vault import (
    Batch,
    Vault,
    encrypted_column,
    iso,
    plain_column,
    table_name,
)
from agent_node.vaultcrypto import decrypt_cell
from consent.errors import ReplayError, UnknownPurpose
from consent.grants import check_purpose

SQL_OPS = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
MIN_K = 2
FP_MOD = 2**62
FP_ROWS = 1_000_003  # per-subject fingerprint: rows * FP_ROWS + sum of row fingerprints
MAX_ATTEMPTS = 5
VIEW_CACHE_SIZE = 1024
VIEW_MEMO_SIZE = 256
RELEASED_CACHE_SIZE = 65536
DENSE_FRACTION = 20  # eligible subjects >= 1/20 of all: filter first, then check consent


@dataclass(frozen=True)
class EngineSettings:
    """How the node answers: ``privacy`` "dp" (differential privacy, the default) or
    "threshold" (k-suppression and overlap control only); in dp mode the per-query epsilon
    bounds, the epsilon of a query that names none, the budget of a grant whose wallet set
    none, and the delta an answer may spend on selecting undeclared group keys."""

    k: int = 5
    default_epsilon: float = 1.0
    privacy: str = "dp"
    epsilon_min: float = 0.05
    epsilon_max: float = 2.0
    grant_budget: float = 10.0
    delta: float = 1e-9

    def __post_init__(self) -> None:
        if self.k < MIN_K:
            raise ValueError(f"k must be at least {MIN_K}")
        if self.privacy not in privacy.MODES:
            raise ValueError("privacy must be 'dp' or 'threshold'")
        if not 0 < self.epsilon_min <= self.default_epsilon <= self.epsilon_max <= 10:
            raise ValueError("epsilon bounds must satisfy 0 < epsilon_min <= default_epsilon "
                             "<= epsilon_max <= 10")
        if not self.epsilon_min <= self.grant_budget <= 1000:
            raise ValueError("grant_budget must be at least epsilon_min and at most 1000")
        if not 0 < self.delta <= 1e-4:
            raise ValueError("delta must be above 0 and at most 1e-4")

    @property
    def dp(self) -> bool:
        return self.privacy == "dp"


@dataclass
class _Group:
    """One group's aggregates, from the two-level SQL of ``_aggregate``."""

    subjects: int  # distinct subjects (k-suppression)
    rows: int
    sids: list[int]  # in the order SQL listed them
    fingerprints: list[int]  # per subject: which of its rows were used (overlap control)
    stats: dict[str, list[Any]] = field(default_factory=dict)  # column -> [n, sum]

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
    dp_epsilon: float | None  # the wallet's budget, if it set one
    spent: int  # micro-epsilon debited so far
    limited: bool = False  # carries max_queries


class _SharedRows(list[_GrantRow]):
    """A fast-path grant list kept with a consent view and shared by every query that reads
    it (never modified): what follows from the list alone is remembered on it, so a query
    does not walk every grant again (hundreds of them) for its budgets, eligible set key
    and grant ids."""

    def __init__(self, rows: list[_GrantRow]) -> None:
        super().__init__(rows)
        self.memo: dict[Any, Any] = {}


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
    epsilon: int | None  # micro-epsilon; None in threshold mode
    used_sids: list[int]
    candidates: list[tuple[tuple[Any, ...], _Group]]  # groups of >= k subjects, in key order
    digests: list[str]  # per candidate: digest of its (subject, fingerprint) set
    blobs: list[bytes | None]  # per candidate: packed members, None if released before
    suppressed: int  # groups already withheld by k
    exact: dict[tuple[Any, ...], dict[str, Any]]  # exact values (threshold mode)
    event: accesslog.PreparedEvent  # as logged when something is released
    empty_event: accesslog.PreparedEvent  # as logged when nothing is
    left_out: list[str] = field(default_factory=list)  # grants whose budget was too small
    noisy: list[dict[str, Any]] = field(default_factory=list)  # dp: the released groups
    selected: bool = False  # dp: group keys went through partition selection


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
        #: Lower bounds on each grant set's budget left (agent_node.spend): O(1) checks.
        self._headroom = spend.HeadroomCache()
        #: Installed intent models: a query naming one is scored (agent_node.scoring).
        self.models = scoring.Models(vault, datamap)

    def privacy_info(self) -> dict[str, Any]:
        """What NodeInfo tells requesters and wallets about how this node answers."""
        settings = self.settings
        if not settings.dp:
            return {"mode": "threshold", "k": settings.k}
        return {"mode": "dp", "unit": "customer", "library": "opendp",
                "epsilon_min": settings.epsilon_min, "epsilon_max": settings.epsilon_max,
                "default_epsilon": settings.default_epsilon,
                "grant_budget": settings.grant_budget, "delta": settings.delta}

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
            self.log_refusal(raw_query, requester, now, exc, nonce,
                             getattr(exc, "left_out", []))
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
        model_scopes: set[str] = set()
        if query.model is not None:  # a scored question: + score, score_band
            dataset, model_scopes = self.models.dataset(dataset, query.model)
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
        if self.settings.dp:
            self._check_dp_query(query, columns)
        elif any(m.aggregate in ("min", "max", "quantile") for m in query.measures):
            raise InvalidRequest("this node runs privacy = \"threshold\", which releases no "
                                 "min, max or quantile (they would be one customer's value); "
                                 "ask for count, sum or avg", reason="threshold-measure")
        scopes = ({c.scope for c in columns.values()} | model_scopes) or {"transaction"}
        return dataset, columns, scopes

    def _query_epsilon(self, query: Query) -> int:
        """The query's epsilon in micro-epsilon, rounded up (what it costs)."""
        return privacy.to_micro(query.epsilon or self.settings.default_epsilon, up=True)

    def _check_dp_query(self, query: Query, columns: dict[str, ColumnSpec]) -> None:
        """Refuse, before anything is read or debited, what differential privacy cannot
        calibrate: an epsilon outside the node's bounds, min / max, a measure on a column
        without bounds, a group-by on a column without a declared contribution bound."""
        low, high = self.settings.epsilon_min, self.settings.epsilon_max
        eps = self._query_epsilon(query)
        if not privacy.to_micro(low, up=True) <= eps <= privacy.to_micro(high, up=False):
            raise InvalidRequest(f"epsilon {privacy.from_micro(eps):g} is outside this node's "
                                 f"bounds [{low:g}, {high:g}]; ask with an epsilon in that range",
                                 reason="epsilon-bounds")
        for measure in query.measures:
            if measure.aggregate in ("min", "max"):
                raise InvalidRequest(f"{measure.aggregate} would release one customer's exact "
                                     "value; ask for a differentially private quantile such as "
                                     f"quantile:{measure.column}:"
                                     f"{'0.05' if measure.aggregate == 'min' else '0.95'}",
                                     reason="dp-measure")
            if measure.aggregate in ("sum", "avg", "quantile") \
                    and columns[measure.column or ""].bounds is None:
                raise PreconditionFailed(
                    f"column {measure.column!r} has no bounds in the data map, so a private "
                    f"{measure.aggregate} cannot be calibrated; the operator adds "
                    "bounds = [low, high] to it", reason="dp-bounds")
        for name in query.group_by:
            if columns[name].group_bound is None:
                raise PreconditionFailed(
                    f"column {name!r} declares no bound on how many of its values one customer "
                    "spans, so a private group-by cannot be calibrated; the operator adds "
                    "groups_per_subject = N or public_keys = [...] to it in the data map",
                    reason="dp-group-bounds")

    # -- grants ---------------------------------------------------------------------------------

    def _grants(self, conn: sqlite3.Connection, query: Query, requester: str,
                scopes: set[str], now: datetime, versions: str | None = None,
                fast: bool = False) -> list[_GrantRow]:
        """The active grants covering the query, with their spend. ``fast`` (the query
        engine's read phase only): when the headroom cache shows every grant can pay the
        query's epsilon, their spend is not read (``spent`` 0: every one is kept; the write
        phase checks the spend exactly)."""
        ts = now.timestamp()
        if query.grant_ids:
            return [self._named_grant(conn, gid, query, requester, scopes, ts)
                    for gid in dict.fromkeys(query.grant_ids)]
        view = self._view(conn, requester, query.purpose, versions)
        active = _active(view, frozenset(scopes), ts, self.settings.dp)
        # What follows from ``active`` alone is kept with it in the view (building a row per
        # grant cost ~0.1 ms a query): the budgeted ids, and the rows the fast path returns.
        derived = view.memo.get(("rows", frozenset(scopes)))
        if derived is None or derived[0] is not active:
            budgeted = [g[0] for g, row in active if row is None]
            # The headroom cache covers a grant set only in dp mode, every grant budgeted
            # and none with max_queries: then its digest is the cache's key.
            uniform = self.settings.dp and len(budgeted) == len(active) \
                and not any(g[5] is not None for g, _ in active)
            derived = view.remember(("rows", frozenset(scopes)), (
                active, budgeted, _SharedRows(
                    [_GrantRow(gid, subject, granted, eps, 0, False)
                     for (gid, subject, granted, _, _, _, eps), _ in active]),
                accesslog.set_digest(accesslog.GRANT_SET, budgeted)
                if uniform and budgeted else None))
        _, budgeted, unspent, digest = derived
        if fast and digest is not None and self._covered(conn, query, digest):
            return unspent  # shared: never modified by the callers
        live = spend.usage(conn, budgeted) if budgeted else {}
        grants = []
        for (gid, subject, granted, _, _, max_q, eps), row in active:
            if row is not None:  # no budget: nothing live to read
                grants.append(row)
                continue
            used, spent = live.get(gid, (0, 0))
            if max_q is None or used < max_q:
                grants.append(_GrantRow(gid, subject, granted, eps, spent, max_q is not None))
        if not grants:
            raise PermissionDenied(
                "no active grant at this node lets this requester use "
                f"{', '.join(sorted(scopes))} data for {query.purpose!r}; ask customers for a "
                "grant covering that purpose and scope", reason="no-grant")
        return grants

    def _covered(self, conn: sqlite3.Connection, query: Query, digest: str) -> bool:
        """Whether the cached headroom of the grant set ``digest`` (dp mode, no grant with
        max_queries) shows, in this snapshot, that every grant can pay the query's epsilon."""
        known = self._headroom.get(digest)
        if known is None:
            return False
        now = spend.totals(conn)
        return now[0] >= known.at[0] and now[1] >= known.at[1] \
            and known.micro - (now[1] - known.at[1]) >= self._query_epsilon(query)

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
            for r in grantstore.active_rows(conn, requester, purpose))
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
        row = grantstore.terms(conn, gid)
        if row is None:
            raise NotFound(f"this node holds no grant {gid}; the customer's wallet must submit "
                           "it first", reason="unknown-grant")
        subject, owner, purpose, granted, nbf, exp, revoked, max_q, eps = row
        used, spent = spend.usage(conn, [gid]).get(gid, (0, 0))  # with the debit journal
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

    def budget(self, grant: _GrantRow) -> int:
        """A grant's privacy budget in micro-epsilon: the wallet's, else the node's default."""
        return privacy.to_micro(grant.dp_epsilon or self.settings.grant_budget, up=False)

    def _privacy_budget(self, query: Query, grants: list[_GrantRow]
                        ) -> tuple[list[_GrantRow], list[_GrantRow], int | None]:
        """(grants to use, grants left out because their budget is spent, the epsilon each
        used grant is debited in micro-epsilon; None in threshold mode). A grant left out
        only removes its customer from the answer: the others' answer is not noisier."""
        if not self.settings.dp:
            # A wallet that set a DP budget asked for differential privacy: its grant is
            # not used by a node that does not provide it.
            kept = [g for g in grants if not g.dp_epsilon]
            if not kept:
                raise PermissionDenied(
                    "every grant covering this query asks for differential privacy, which this "
                    "node (privacy = \"threshold\") does not provide; ask a node in dp mode",
                    reason="dp-required")
            return kept, [], None
        epsilon = self._query_epsilon(query)
        if isinstance(grants, _SharedRows):  # a view's unspent rows: same result each time
            found = grants.memo.get(("budget", epsilon))
            if found is not None:
                return found  # type: ignore[no-any-return]
        kept = []
        left: list[_GrantRow] = []
        budgets: dict[float | None, int] = {}  # most grants share the node's default
        for grant in grants:
            budget = budgets.get(grant.dp_epsilon)
            if budget is None:
                budget = budgets[grant.dp_epsilon] = self.budget(grant)
            (kept if grant.spent + epsilon <= budget else left).append(grant)
        if not kept:
            exc = BudgetExhausted("every grant covering this query has spent its privacy "
                                  "budget; ask the customers for new grants or a smaller "
                                  "epsilon", reason="epsilon-exhausted")
            exc.left_out = [g.grant_id for g in left]  # type: ignore[attr-defined]
            raise exc
        if isinstance(grants, _SharedRows):
            # Every grant kept (the usual case): the shared list itself, with its memo.
            return grants.memo.setdefault(("budget", epsilon),
                                          (grants if not left else kept, left, epsilon))
        return kept, left, epsilon

    # -- execution ------------------------------------------------------------------------------

    def _answer(self, query: Query, requester: str, now: datetime,
                nonce: Nonce | None) -> dict[str, Any]:
        dataset, columns, scopes = self._validate(query)
        for _ in range(MAX_ATTEMPTS):
            plan = self._read(query, dataset, columns, scopes, requester, now)
            try:
                seq, released = self.vault.commit(functools.partial(
                    self._commit, plan=plan, query=query, requester=requester, now=now,
                    nonce=nonce))
            except _Stale:
                continue  # consent or a budget changed under the read: answer afresh
            return self._reply(plan, query, dataset, requester, now, seq, released)
        raise Contended("grants at this node changed while the query ran; retry it",
                        reason="contended")

    def _read(self, query: Query, dataset: DatasetSpec, columns: dict[str, ColumnSpec],
              scopes: set[str], requester: str, now: datetime,
              shared: tuple[sqlite3.Connection, dict[Any, Any]] | None = None) -> _Plan:
        """The read phase, on a consistent snapshot: grants and budgets, consent filter,
        aggregates, then (dp) partition selection and noise or (threshold) k-suppression and
        exact values, and the prepared access event. Nothing is written to the vault here
        (only this connection's temp tables)."""
        with self._snapshot(shared) as conn:
            # One statement for what the snapshot must start with (each costs ~40 us).
            layout, version, versions, subjects = _snapshot_state(conn, dataset.name)
            if layout != self.vault.layout(getattr(dataset, "base", None) or dataset):
                raise PreconditionFailed(f"dataset {dataset.name!r} has not been synced yet; "
                                         "the operator runs 'sov-node sync'", reason="not-synced")
            grants, left_out, epsilon = self._report_memo(
                shared, ("grants", query.purpose, frozenset(scopes), query.grant_ids,
                         query.epsilon),
                lambda: self._privacy_budget(query, self._grants(
                    conn, query, requester, scopes, now, versions, fast=True)))
            owners, trivial = self._eligible(conn, query, requester, grants, versions,
                                             shared[1] if shared else None)
            # Many consenting subjects: read the rows the filters select and keep theirs.
            # Few: seek each one's rows through the subject index.
            dense = len(owners) * DENSE_FRACTION >= subjects
            source = self._source(conn, dataset, columns)
            if epsilon is not None:
                return self._read_dp(conn, query, dataset, columns, requester, now, version,
                                     grants, left_out, epsilon, owners, trivial, source, dense)
            groups = self._aggregate(conn, source, query, dense)
            k = self.settings.k
            candidates = [(key, groups[key]) for key in sorted(groups, key=_sort_key)
                          if groups[key].subjects >= k]
            exact = {key: self._values(query, group) for key, group in candidates}
            digests, blobs = _digests(conn, requester, query.dataset, candidates,
                                      self._released)
            # Used = the subjects with rows matching the query (all groups, also those then
            # withheld: whether a group reaches k is computed from their rows), never every
            # consenting subject; their grants are the ones named and debited.
            used = sorted({sid for g in groups.values() for sid in g.sids})
            used_subjects = {subject for sid in used for subject in owners.get(sid, ())}
            used_grants = [g for g in grants if g.subject in used_subjects]
            ids = [g.grant_id for g in used_grants]
            event = self._event(conn, query, requester, now, "answered", "ok", used, ids,
                                released=True)
            empty = self._event(conn, query, requester, now, "answered", "ok", used, ids,
                                released=False)
        return _Plan(version, used_grants, None, used, candidates, digests, blobs,
                     len(groups) - len(candidates), exact, event, empty)

    @contextmanager
    def _snapshot(self, shared: tuple[sqlite3.Connection, dict[Any, Any]] | None
                  ) -> Iterator[sqlite3.Connection]:
        """A snapshot of its own, or the report's shared one (its read phases see one state
        of the vault; each write phase still checks consent and budgets exactly)."""
        if shared is not None:
            yield shared[0]
            return
        with self.vault.snapshot() as conn:
            yield conn

    @staticmethod
    def _report_memo(shared: tuple[sqlite3.Connection, dict[Any, Any]] | None, key: Any,
                     compute: Callable[[], Any]) -> Any:
        """``compute()``, once per report for ``key`` (same snapshot, same inputs)."""
        if shared is None:
            return compute()
        memo = shared[1]
        if key not in memo:
            memo[key] = compute()
        return memo[key]

    def _read_dp(self, conn: sqlite3.Connection, query: Query, dataset: DatasetSpec,
                 columns: dict[str, ColumnSpec], requester: str, now: datetime, version: str,
                 grants: list[_GrantRow], left_out: list[_GrantRow], epsilon: int,
                 owners: dict[int, list[str]], trivial: bool, source: str, dense: bool
                 ) -> _Plan:
        """The dp read phase: contribution-bounded aggregates per customer, partition
        selection (unless every group-by column declares its keys public), noise on what is
        released. Every customer in the consent filter is read and debited, whatever the
        filters match: who is debited must not depend on the data."""
        l0, public = _group_bounds(query, columns)
        stats = self._aggregate_dp(conn, source, query, dataset, columns, dense, trivial,
                                   l0, public)
        selected = bool(query.group_by) and public is None
        parts = int(selected) + sum(2 if m.aggregate == "avg" else 1 for m in query.measures)
        share = privacy.split(epsilon, parts)
        if not query.group_by:
            keys: list[tuple[Any, ...]] = [()]
        elif public is not None:
            keys = public
        else:
            counts = {json.dumps(list(key)): g["units"] for key, g in stats.items()}
            chosen = privacy.select_groups(counts, l0, share, self.settings.delta)
            keys = sorted((tuple(json.loads(k)) for k in chosen), key=_sort_key)
        noisy = _noisy_groups(query, dataset, columns, keys, stats, share, l0,
                              self._quantile_rows(conn, source, query, columns, dense, trivial)
                              if any(m.aggregate == "quantile" for m in query.measures)
                              else {})
        used = sorted(owners)
        ids = grants.memo.get("ids") if isinstance(grants, _SharedRows) else None
        if ids is None:
            ids = [g.grant_id for g in grants]
            if isinstance(grants, _SharedRows):
                grants.memo["ids"] = ids
        out = [g.grant_id for g in left_out]
        extra = {"epsilon": privacy.from_micro(epsilon),
                 "delta": self.settings.delta if selected else 0}
        event = self._event(conn, query, requester, now, "answered", "ok", used, ids,
                            released=bool(noisy), left_out=out, extra=extra)
        return _Plan(version, grants, epsilon, used, [], [], [], 0, {}, event, event, out,
                     noisy, selected)

    def _commit(self, conn: sqlite3.Connection, batch: Batch, plan: _Plan, query: Query,
                requester: str, now: datetime, nonce: Nonce | None
                ) -> tuple[int, list[tuple[Any, ...]]]:
        """The write phase, one job of a group-commit batch: confirm that consent did not
        shrink since the read, check and debit budgets atomically, apply the overlap
        control (threshold mode) and append the access event. Every check comes before the
        first write (a refusal leaves nothing behind); writes that cannot fail a check are
        deferred to the batch's end."""
        version = batch.memo.get("consent_version")
        if version is None:  # only other connections change consent, never this batch
            version = batch.memo["consent_version"] = _consent_version(conn)
        if version != plan.consent_version:
            raise _Stale
        dp_mode = plan.epsilon is not None
        micro = plan.epsilon or 0
        shared = plan.used_grants.memo if isinstance(plan.used_grants, _SharedRows) else {}
        # A view's shared rows carry their ids and (set in _grants) none has max_queries.
        used_ids = shared.get("ids") or [g.grant_id for g in plan.used_grants]
        if dp_mode:
            # One journal row per answer, keyed by its grant set (agent_node.spend), checked
            # first: in O(1) while the set's cached headroom covers it, else exactly.
            set_key = accesslog.set_digest(accesslog.GRANT_SET, used_ids) if used_ids else ""
            ok, exact = spend.check(conn, self._headroom, set_key, micro,
                                    lambda: {g.grant_id: self.budget(g)
                                             for g in plan.used_grants},
                                    [] if shared else
                                    [g.grant_id for g in plan.used_grants if g.limited])
            if not ok:
                raise _Stale
            if exact is not None and set_key:
                batch.after_commit(functools.partial(self._headroom.remember, set_key, exact))
            limited = []
        else:
            limited = [g for g in plan.used_grants if g.limited]
            _check_budgets(conn, limited, 0, {})
        if nonce is not None:  # the last check and the first write: spent with the event
            _spend(conn, nonce)
        released: list[tuple[Any, ...]] = []
        for (key, group), digest, blob in zip(plan.candidates, plan.digests, plan.blobs,
                                              strict=True):
            # blob None: the snapshot showed this very set released, and releases are final.
            if blob is None or _releasable(conn, requester, query.dataset, group, digest,
                                           blob, self.settings.k, now):
                released.append(key)
                if blob is not None:
                    batch.after_commit(functools.partial(
                        self._remember_release, requester, query.dataset, digest))
        # In dp mode every used grant is debited its epsilon, as one journal row for the
        # answer's grant set; in threshold mode only grants with max_queries keep a counter
        # (narrow grant_usage rows), the others' use is counted from the access log's grant
        # sets when a wallet asks.
        _debit(conn, [g.grant_id for g in limited], 0)
        event = plan.event if (released or plan.noisy) else plan.empty_event
        seq, _ = accesslog.append_batched(conn, batch, event, plan.used_sids, used_ids,
                                          plan.left_out)
        if dp_mode and used_ids:  # set_id is None only for an empty set
            spend.debit(conn, cast(int, accesslog.set_id(conn, batch, accesslog.GRANT_SET,
                                                        used_ids)), micro)
        return seq, released

    def _remember_release(self, requester: str, dataset: str, digest: str) -> None:
        if len(self._released) >= RELEASED_CACHE_SIZE:
            self._released.clear()
        self._released.add((requester, dataset, digest))

    def _reply(self, plan: _Plan, query: Query, dataset: DatasetSpec, requester: str,
               now: datetime, seq: int, released: list[tuple[Any, ...]]) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "dataset": dataset.name, "purpose": query.purpose, "requester": requester,
            "node": self.node_did, "mode": self.settings.privacy,
            "measures": [m.label for m in query.measures], "group_by": list(query.group_by),
            "answered_at": iso(now), "event_seq": seq,
        }
        if plan.epsilon is None:
            answer["k"] = self.settings.k
            answer["groups"] = [{"key": list(key), "values": plan.exact[key]}
                                for key in released]
            answer["dp"] = None
            if not released:
                answer["note"] = (f"nothing was released: no group had at least k="
                                  f"{self.settings.k} consenting customers that an earlier "
                                  "answer had not nearly covered already")
            return answer
        answer["groups"] = plan.noisy
        answer["dp"] = {
            "epsilon": privacy.from_micro(plan.epsilon),
            "delta": self.settings.delta if plan.selected else 0,
            "unit": "customer", "confidence": privacy.CONFIDENCE, "library": "opendp",
            "mechanisms": _mechanisms(query, plan.selected),
        }
        if not plan.noisy:
            answer["note"] = ("nothing was released: no group had enough consenting customers "
                              "to pass the noisy release threshold")
        return answer

    def _eligible(self, conn: sqlite3.Connection, query: Query, requester: str,
                  grants: list[_GrantRow], versions: str | None = None,
                  built: dict[Any, Any] | None = None) -> tuple[dict[int, list[str]], bool]:
        """Fill temp._eligible with the sids bound to the grants' subjects (the consent
        filter) and each sid's privacy unit; skipped when this thread's temp table already
        holds exactly that set. Returns each eligible sid's subject DIDs (a customer may be
        bound to several) and whether every unit is a single sid."""
        if query.grant_ids:
            owners, listed, marker, trivial = _eligible_set(
                _bound_sids(conn, {g.subject for g in grants}))
        else:
            view = self._view(conn, requester, query.purpose, versions)
            subjects = grants.memo.get("subjects") if isinstance(grants, _SharedRows) \
                else None
            if subjects is None:
                subjects = tuple(g.subject for g in grants)
                if isinstance(grants, _SharedRows):
                    grants.memo["subjects"] = subjects
            key = ("eligible", subjects)
            found = view.memo.get(key)
            if found is None:
                found = view.remember(key, _eligible_set(
                    {g.subject: view.sids.get(g.subject, []) for g in grants}))
            owners, listed, marker, trivial = found
        if built is not None and built.get("eligible") == marker:
            return owners, trivial  # filled earlier in this report's shared snapshot
        if built is not None:
            built["eligible"] = marker
        if getattr(self._local, "eligible", None) != marker:
            self._local.eligible = None  # unknown until the snapshot commits
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS _eligible (sid INTEGER PRIMARY KEY, "
                         "unit INTEGER NOT NULL)")
            conn.execute("DELETE FROM temp._eligible")
            conn.execute("INSERT INTO temp._eligible (sid, unit) SELECT "
                         "json_extract(value, '$[0]'), json_extract(value, '$[1]') "
                         "FROM json_each(?)", (listed,))
            self.vault.after_snapshot(conn, lambda: setattr(self._local, "eligible", marker))
        return owners, trivial

    def _source(self, conn: sqlite3.Connection, dataset: DatasetSpec,
                columns: dict[str, ColumnSpec]) -> str:
        """The table to aggregate: the vault table, or a temp table of decrypted columns
        when the query touches encrypted ones (dropped when the connection reuses it), or
        the scored rows of a question naming a model."""
        if isinstance(dataset, scoring.ScoredDataset):
            return dataset.build_source(conn, self.vault, columns)
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
                   dense: bool) -> dict[tuple[Any, ...], _Group]:
        """Threshold mode. Two-level SQL, one pass over the data: the inner level groups by
        (group keys, subject) and yields per-subject partials and row fingerprints; the outer
        level sums them per group, counts subjects and lists (subject, fingerprint) pairs for
        the overlap control. With a covering index on the first group-by column, the inner
        level reads the index in (group, subject) order: no sort, no table lookups."""
        keys = [f'"{plain_column(g)}"' for g in query.group_by]
        outer_keys = [f"k{i}" for i in range(len(keys))]
        numeric = sorted({m.column for m in query.measures if m.column})
        # The row-fingerprint sum says which rows of a subject were used (keyed, 40-bit).
        inner = [*(f"{k} AS {o}" for k, o in zip(keys, outer_keys, strict=True)), "sid",
                 "COUNT(*) AS r", "SUM(rfp) AS f"]
        outer = [*outer_keys, "COUNT(*)", "SUM(r)", "GROUP_CONCAT(sid)",
                 f"GROUP_CONCAT(r * {FP_ROWS} + f)"]
        for i, name in enumerate(numeric):
            col = f'"{plain_column(name)}"'
            inner += [f"COUNT({col}) AS n{i}", f"SUM({col}) AS s{i}"]
            outer += [f"SUM(n{i})", f"SUM(s{i})"]
        where, params = self._where(query, self._columns(query), dense)
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
            for i, name in enumerate(numeric):
                at = width + 4 + 2 * i
                group.stats[name] = [row[at], row[at + 1] or 0]
            groups[tuple(row[:width])] = group
        return groups

    def _dataset_of(self, query: Query) -> DatasetSpec:
        dataset = self.datamap.datasets[query.dataset]
        return self.models.dataset(dataset, query.model)[0] if query.model else dataset

    def _columns(self, query: Query) -> dict[str, ColumnSpec]:
        dataset = self._dataset_of(query)
        return {name: dataset.columns[name] for name in query.columns()}

    def _aggregate_dp(self, conn: sqlite3.Connection, source: str, query: Query,
                      dataset: DatasetSpec, columns: dict[str, ColumnSpec], dense: bool,
                      trivial: bool, l0: int, public: list[tuple[Any, ...]] | None
                      ) -> dict[tuple[Any, ...], dict[str, Any]]:
        """Contribution-bounded aggregates per group, in one SQL pass. The inner level groups
        by (group keys, unit), each value clamped to its bounds. With a group-by, the middle
        level orders each unit's groups (most rows first) and keeps the first ``l0``, and
        gives each group an allowance ``a`` of rows: what is left of ``max_rows_per_subject``
        after the unit's groups before it, so that a unit contributes at most that many rows
        in all. Without one, ``a`` is simply the unit's rows, capped. The outer level counts
        units per group and sums each unit's allowance, its non-null counts capped at it and
        its clamped sum capped at that many values: a customer moves the counts by at most
        ``max_rows_per_subject`` in total (L1), the sums by that many times the bound."""
        keys = [f'"{plain_column(g)}"' for g in query.group_by]
        outer_keys = [f"k{i}" for i in range(len(keys))]
        cap = dataset.max_rows_per_subject
        unit = "sid" if trivial else "(SELECT unit FROM temp._eligible e WHERE e.sid = t.sid)"
        inner = [*(f"{k} AS {o}" for k, o in zip(keys, outer_keys, strict=True)),
                 f"{unit} AS u", "COUNT(*) AS r"]
        allowance = "a" if keys else f"MIN(r, {cap})"
        outer = [*outer_keys, "COUNT(*)", f"SUM({allowance})"]
        names: list[str] = ["units", "rows"]
        summed = {m.column for m in query.measures if m.aggregate in ("sum", "avg")}
        counted = sorted({m.column for m in query.measures
                          if m.column and m.aggregate in ("count", "avg")})
        for i, name in enumerate(counted):
            inner.append(f'COUNT("{plain_column(name)}") AS n{i}')
            outer.append(f"SUM(MIN(n{i}, {allowance}))")
            names.append(f"n:{name}")
        for i, name in enumerate(sorted(c for c in summed if c)):
            low, high = columns[name].bounds or (0.0, 0.0)
            col = f'"{plain_column(name)}"'
            inner.append(f"SUM(MIN(MAX({col}, {low!r}), {high!r})) AS s{i}")
            outer.append(f"TOTAL(MAX(MIN(COALESCE(s{i}, 0), {allowance} * {max(high, 0.0)!r}), "
                         f"{allowance} * {min(low, 0.0)!r}))")
            names.append(f"s:{name}")
        where, params = self._where(query, columns, dense)
        where, params = _public_filter(where, params, query, columns)
        middle = (f"SELECT {', '.join(inner)} FROM {source} AS t WHERE {where} "
                  f"GROUP BY {', '.join([*keys, 'u'])}")
        if keys:
            order = f"PARTITION BY u ORDER BY r DESC, {', '.join(outer_keys)}"
            middle = (f"SELECT *, MAX(0, MIN(r, {cap} - (run - r))) AS a FROM (SELECT *, "
                      f"ROW_NUMBER() OVER ({order}) AS g, SUM(r) OVER ({order} ROWS UNBOUNDED "
                      f"PRECEDING) AS run FROM ({middle})) WHERE g <= {l0}")
        sql = (f"SELECT {', '.join(outer)} FROM ({middle})"
               + (f" GROUP BY {', '.join(outer_keys)}" if keys else " HAVING COUNT(*) > 0"))
        width = len(keys)
        return {tuple(row[:width]): dict(zip(names, row[width:], strict=True))
                for row in conn.execute(sql, params)}

    def _quantile_rows(self, conn: sqlite3.Connection, source: str, query: Query,
                       columns: dict[str, ColumnSpec], dense: bool, trivial: bool
                       ) -> dict[str, dict[tuple[Any, ...], list[float]]]:
        """Per quantile column, per group: the values a quantile may use, clamped to the
        bounds, at most ``max_rows_per_subject`` per unit and group, in at most l0 groups per
        unit (each unit's groups with the most rows)."""
        dataset = self._dataset_of(query)
        cap = dataset.max_rows_per_subject
        l0, _ = _group_bounds(query, columns)
        keys = [f'"{plain_column(g)}"' for g in query.group_by]
        unit = "sid" if trivial else "(SELECT unit FROM temp._eligible e WHERE e.sid = t.sid)"
        where, params = self._where(query, columns, dense)
        where, params = _public_filter(where, params, query, columns)
        found: dict[str, dict[tuple[Any, ...], list[float]]] = {}
        for name in sorted({m.column or "" for m in query.measures
                            if m.aggregate == "quantile"}):
            low, high = columns[name].bounds or (0.0, 0.0)
            col = f'"{plain_column(name)}"'
            per_unit: dict[Any, dict[tuple[Any, ...], list[float]]] = {}
            for row in conn.execute(
                    f"SELECT {', '.join([*keys, unit])}, {col} FROM {source} AS t WHERE {where} "
                    f"AND {col} IS NOT NULL ORDER BY rfp", params):
                by_key = per_unit.setdefault(row[-2], {})
                values = by_key.setdefault(tuple(row[:-2]), [])
                if len(values) < cap:
                    values.append(min(max(float(row[-1]), low), high))
            groups: dict[tuple[Any, ...], list[float]] = {}
            for by_key in per_unit.values():
                for key in _busiest_groups(by_key, l0):
                    groups.setdefault(key, []).extend(by_key[key])
            found[name] = groups
        return found

    @staticmethod
    def _values(query: Query, group: _Group) -> dict[str, Any]:
        """Threshold mode: a group's exact count, sum and avg."""
        values: dict[str, Any] = {}
        for measure in query.measures:
            if measure.aggregate == "count":
                values[measure.label] = (group.rows if measure.column is None
                                         else int(group.stats.get(measure.column, [0])[0]))
            else:
                n, total = group.stats[measure.column or ""]
                values[measure.label] = total if measure.aggregate == "sum" \
                    else (total / n if n else None)
        return values

    # -- access log -----------------------------------------------------------------------------

    def _event(self, conn: sqlite3.Connection, query: Query | None, requester: str,
               now: datetime, outcome: str, reason: str, sids: list[int],
               grant_ids: list[str], *, released: bool = False,
               left_out: list[str] | None = None, extra: dict[str, Any] | None = None
               ) -> accesslog.PreparedEvent:
        """The access event, canonicalised outside the write transaction. It names the grants
        debited, the subjects read and the grants left out (budget spent) by their sets'
        sizes and Merkle roots (accesslog.set_commitment), so no customer's event shows
        another customer's grant ids; ``mode`` and ``released`` say how the answer was made
        and whether it released anything, ``epsilon`` what each debited grant paid."""
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
        left_count, left_root = accesslog.set_commitment(left_out or [])
        return accesslog.prepare({
            "v": accesslog.EVENT_VERSION, "time": iso(now), "node": self.node_did,
            "requester": requester, "purpose": query.purpose if query else None,
            "dataset": query.dataset if query else None, "outcome": outcome, "reason": reason,
            "mode": self.settings.privacy, "released": released, "epsilon": None,
            "grant_count": grant_count, "grants_root": grants_root,
            "subject_count": subject_count, "subjects_root": subjects_root,
            "left_out_count": left_count, "left_out_root": left_root, **(extra or {}),
            **({"model": query.model} if query is not None and query.model else {}),
        })

    def log_refusal(self, raw_query: Any, requester: str, now: datetime,
                    exc: RequestError, nonce: Nonce | None = None,
                    left_out: list[str] | None = None) -> None:
        """Log a refusal: nothing released, nothing debited. ``left_out``: grants that were
        left out because their budget was spent (so their customers see why)."""
        self.vault.commit(self._refusal_record(raw_query, requester, now, exc, nonce,
                                               left_out))

    def _refusal_record(self, raw_query: Any, requester: str, now: datetime,
                        exc: RequestError, nonce: Nonce | None = None,
                        left_out: list[str] | None = None
                        ) -> Callable[[sqlite3.Connection, Batch], None]:
        """The write job logging a refusal (``log_refusal``; a report runs several in one)."""
        try:
            query: Query | None = query_from_dict(raw_query)
        except RequestError:
            query = None
        grant_ids = list(query.grant_ids) if query else _named_grants(raw_query)
        left = sorted(left_out or [])

        def record(conn: sqlite3.Connection, batch: Batch) -> None:
            # Only grant ids the node actually holds are linked, so a subject sees refusals
            # that named its grants, and made-up ids do not pollute the index.
            known = grantstore.held(conn, grant_ids)
            known = [g for g in known if g not in left]
            event = self._event(conn, query, requester, now, "refused", exc.reason, [], known,
                                left_out=left)
            if nonce is not None:  # spent by the refusal too (unless that was the refusal)
                nonces.record_if_new(conn, nonce)
            accesslog.append_batched(conn, batch, event, [], sorted(known), left)

        return record

    # -- reports ----------------------------------------------------------------------------

    def run_report(self, raw_queries: list[Any], requester: str, now: datetime | None = None,
                   nonce: Nonce | None = None,
                   refuse: Callable[[Any], RequestError | None] | None = None
                   ) -> list[dict[str, Any] | RequestError]:
        """Answer a report: every query as if asked alone (its own consent check, privacy
        accounting and access event; a refused query refuses only itself, with nothing
        debited for it), in order. The write phases of all of them run as one job of the
        group-committed transaction, so a report costs one durable commit, not one per
        query; the nonce is spent once, in that transaction. ``refuse`` may refuse a query
        before it is read (the service's region rule)."""
        now = now or datetime.now(UTC)
        results: list[dict[str, Any] | RequestError | None] = [None] * len(raw_queries)
        todo: dict[int, tuple[Query, DatasetSpec, dict[str, ColumnSpec], set[str]]] = {}
        for i, raw in enumerate(raw_queries):
            try:
                refused = refuse(raw) if refuse is not None else None
                if refused is not None:
                    raise refused
                query = query_from_dict(raw)
                todo[i] = (query, *self._validate(query))
            except RequestError as exc:
                results[i] = exc
        unlogged = [i for i, r in enumerate(results) if r is not None]
        for _ in range(MAX_ATTEMPTS):
            plans: dict[int, _Plan] = {}
            with self.vault.snapshot() as conn:
                shared: tuple[sqlite3.Connection, dict[Any, Any]] = (conn, {})
                for i, (query, dataset, columns, scopes) in todo.items():
                    try:
                        plans[i] = self._read(query, dataset, columns, scopes, requester, now,
                                              shared)
                    except RequestError as exc:
                        results[i] = exc
                        unlogged.append(i)
            todo = {i: todo[i] for i in plans}
            records = [self._refusal_record(raw_queries[i], requester, now,
                                            cast(RequestError, results[i]), None,
                                            getattr(results[i], "left_out", []))
                       for i in unlogged]
            unlogged = []
            try:
                done = self.vault.commit(functools.partial(
                    self._commit_report, plans=plans, todo=todo, records=records,
                    requester=requester, now=now, nonce=nonce))
            except Replayed as exc:  # the whole report, before anything was written
                self.log_refusal({}, requester, now, exc)
                raise
            nonce = None  # spent by the transaction that just committed
            for i, outcome in done.items():
                if isinstance(outcome, _Stale):
                    continue  # consent or a budget changed under the read: read it again
                query, dataset, _, _ = todo.pop(i)
                if isinstance(outcome, RequestError):
                    results[i] = outcome
                    unlogged.append(i)
                else:
                    results[i] = self._reply(plans[i], query, dataset, requester, now,
                                             *outcome)
            if not todo and not unlogged:
                break
        else:
            for i in todo:
                results[i] = Contended("grants at this node changed while the query ran; "
                                       "retry it", reason="contended")
                unlogged.append(i)
            records = [self._refusal_record(raw_queries[i], requester, now,
                                            cast(RequestError, results[i]))
                       for i in unlogged]
            self.vault.commit(functools.partial(_run_all, records))
        return results  # type: ignore[return-value]

    def _commit_report(self, conn: sqlite3.Connection, batch: Batch, plans: dict[int, _Plan],
                       todo: dict[int, tuple[Query, DatasetSpec, dict[str, ColumnSpec],
                                             set[str]]],
                       records: list[Callable[[sqlite3.Connection, Batch], None]],
                       requester: str, now: datetime, nonce: Nonce | None
                       ) -> dict[int, Any]:
        """A report's write phase: the nonce first (a replay refuses the whole report before
        anything is written), then each query's write phase exactly as alone (a stale or
        refused one writes nothing, the others go on), then the refusals' events."""
        if nonce is not None:
            _spend(conn, nonce)
        done: dict[int, Any] = {}
        for i, plan in plans.items():
            query = todo[i][0]
            before = conn.total_changes
            try:
                done[i] = self._commit(conn, batch, plan, query, requester, now, None)
            except (_Stale, RequestError) as exc:
                if conn.total_changes != before:  # never: every check comes before a write
                    raise
                done[i] = exc
        for record in records:
            record(conn, batch)
        return done


def _named_grants(raw_query: Any) -> list[str]:
    """The well-formed grant ids a malformed query names, so that the refusal reaches the
    customers whose grants it named."""
    named = raw_query.get("grant_ids") if isinstance(raw_query, dict) else None
    if not isinstance(named, list):
        return []
    return [g for g in named[:MAX_GRANT_IDS] if isinstance(g, str) and GRANT_RE.match(g)]


# -- helpers ------------------------------------------------------------------------------------

def _eligible_set(by_subject: dict[str, list[int]]
                  ) -> tuple[dict[int, list[str]], str, bytes, bool]:
    """(sid -> subject DIDs, [[sid, unit], ...] as JSON, its digest, every unit one sid)
    for the consent filter. A privacy unit is a set of sids linked through the customers
    bound to them (union-find): all of one customer's rows always fall in one unit, so
    bounding each unit's contribution bounds each customer's."""
    owners: dict[int, list[str]] = {}
    parent: dict[int, int] = {}

    def root(sid: int) -> int:
        while parent[sid] != sid:
            parent[sid] = parent[parent[sid]]
            sid = parent[sid]
        return sid

    for subject, sids in by_subject.items():
        for sid in sids:
            owners.setdefault(sid, []).append(subject)
            parent.setdefault(sid, sid)
        for sid in sids[1:]:
            a, b = root(sids[0]), root(sid)
            if a != b:
                parent[max(a, b)] = min(a, b)
    units = {sid: root(sid) for sid in sorted(owners)}
    listed = json.dumps([[sid, unit] for sid, unit in units.items()])
    trivial = all(sid == unit for sid, unit in units.items())
    return owners, listed, hashlib.sha256(listed.encode()).digest(), trivial


def _active(view: _ConsentView, scopes: frozenset[str], ts: float, dp_mode: bool
            ) -> list[tuple[tuple[Any, ...], _GrantRow | None]]:
    """The view's grants valid at ``ts`` covering ``scopes``, each with its ready row when it
    has no budget (None: budgets are read live; in dp mode every grant has one). Kept in the
    view until the next moment a grant becomes valid or expires."""
    found = view.memo.get(("active", scopes))
    if found is not None and found[0] <= ts < found[1]:
        return found[2]  # type: ignore[no-any-return]
    active, until = [], float("inf")
    for grant in view.grants:
        gid, subject, granted, nbf, exp, max_q, eps = grant
        until = min(until, *(t for t in (nbf, exp) if t > ts), float("inf"))
        if nbf <= ts < exp and scopes <= granted:
            budgeted = dp_mode or max_q is not None or bool(eps)
            active.append((grant, None if budgeted
                           else _GrantRow(gid, subject, granted, eps, 0, False)))
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


def _check_budgets(conn: sqlite3.Connection, grants: list[_GrantRow], epsilon: int,
                   budgets: dict[str, int]) -> None:
    """Inside the write transaction: every grant still has a query (max_queries) and, in dp
    mode, ``epsilon`` micro-epsilon of its budget left (``budgets``; integers, compared
    exactly), else a concurrent query spent it and the query is read again (and then answered
    without that grant, or refused)."""
    if not grantstore.can_debit(conn, [g.grant_id for g in grants], epsilon, budgets):
        raise _Stale


def _debit(conn: sqlite3.Connection, grant_ids: list[str], epsilon: int) -> None:
    """Debit one query and ``epsilon`` micro-epsilon from each grant (checked by
    ``_check_budgets`` earlier in the same transaction)."""
    grantstore.debit(conn, grant_ids, epsilon)


class Replayed(RequestError):
    """Another process (or this one before a restart) already answered this nonce."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "replayed-nonce"


def _spend(conn: sqlite3.Connection, nonce: Nonce) -> None:
    try:
        nonces.record(conn, nonce)
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


def _busiest_groups(by_key: dict[tuple[Any, ...], list[float]], l0: int
                    ) -> list[tuple[Any, ...]]:
    """A customer's ``l0`` groups holding most of their values (ties in key order): the
    groups whose contributions the bound keeps."""
    return sorted(by_key, key=lambda k: (-len(by_key[k]), _sort_key(k)))[:l0]


def _run_all(records: list[Callable[[sqlite3.Connection, Batch], None]],
             conn: sqlite3.Connection, batch: Batch) -> None:
    """One write job running several (a report's refusal records)."""
    for record in records:
        record(conn, batch)


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
        for digest in releases.released(conn, requester, dataset, unknown):
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
    if releases.is_released(conn, requester, dataset, digest):
        return True
    members = group.members()
    size = len(members)
    for other in releases.near(conn, requester, dataset, size - k + 1, size + k - 1):
        if 0 < _changed_subjects(members, _unpack(other)) < k:
            return False
    releases.record(conn, requester, dataset, size, digest,
                    blob if blob is not None else zlib.compress(_packed(members)), iso(now))
    return True


MAX_PUBLIC_GROUPS = 10_000


def _group_bounds(query: Query, columns: dict[str, ColumnSpec]
                  ) -> tuple[int, list[tuple[Any, ...]] | None]:
    """(l0: how many groups one customer may touch, the public group keys if every group-by
    column declares its keys public, else None)."""
    if not query.group_by:
        return 1, None
    l0 = 1
    for name in query.group_by:
        l0 *= columns[name].group_bound or 1
    if not all(columns[name].public_keys is not None for name in query.group_by):
        return l0, None
    size = 1
    for name in query.group_by:
        size *= len(columns[name].public_keys or ())
    if size > MAX_PUBLIC_GROUPS:
        raise InvalidRequest(f"grouping by {', '.join(query.group_by)} makes {size} public "
                             f"groups, more than {MAX_PUBLIC_GROUPS}; group by fewer columns",
                             reason="too-many-groups")
    keys = itertools.product(*(columns[name].public_keys or () for name in query.group_by))
    return l0, sorted(keys, key=_sort_key)


def _public_filter(where: str, params: list[Any], query: Query,
                   columns: dict[str, ColumnSpec]) -> tuple[str, list[Any]]:
    """Rows whose group key is not among a column's declared public keys never count."""
    for name in query.group_by:
        keys = columns[name].public_keys
        if keys is not None:
            where += f' AND "{plain_column(name)}" IN ({", ".join("?" for _ in keys)})'
            params = [*params, *(_coerce(k, columns[name]) for k in keys)]
    return where, params


def _noisy_groups(query: Query, dataset: DatasetSpec, columns: dict[str, ColumnSpec],
                  keys: list[tuple[Any, ...]], stats: dict[tuple[Any, ...], dict[str, Any]],
                  share: Fraction, l0: int, quantiles: dict[str, dict[tuple[Any, ...],
                                                                  list[float]]]
                  ) -> list[dict[str, Any]]:
    """Each released group's noisy values and their accuracy, one OpenDP measurement per
    measure over all released groups. Counts and sums: a customer's rows are capped in all
    groups together (``_aggregate_dp``), so the L1 sensitivity over the vector is the row cap
    (times the bound for sums). Quantiles: each of the customer's at most ``l0`` groups
    changes by at most the row cap, so each group's quantile gets ``share / l0``."""
    cap = dataset.max_rows_per_subject

    def stat(name: str) -> list[Any]:
        return [stats.get(key, {}).get(name) or 0 for key in keys]

    values: list[dict[str, Any]] = [{} for _ in keys]
    accuracy: list[dict[str, Any]] = [{} for _ in keys]
    for measure in query.measures:
        column = columns.get(measure.column or "")
        if measure.aggregate == "count":
            released, _ = privacy.noisy_counts(
                [int(v) for v in stat("rows" if column is None else f"n:{column.name}")],
                cap, share)
        elif measure.aggregate == "quantile" and column is not None:
            low, high = column.bounds or (0.0, 0.0)
            candidates = privacy.quantile_candidates(low, high, column.type == "integer")
            by_key = quantiles.get(column.name, {})
            released = [privacy.noisy_quantile(by_key.get(key, []), candidates,
                                                measure.q or 0.5, cap, share / l0)
                        for key in keys]
        elif column is not None:
            low, high = column.bounds or (0.0, 0.0)
            integer = column.type == "integer" and low.is_integer() and high.is_integer()
            released, sum_scale = privacy.noisy_sums(
                [float(v) for v in stat(f"s:{column.name}")],
                cap * max(abs(low), abs(high)), share, integer)
            if measure.aggregate == "avg":
                counts, count_scale = privacy.noisy_counts(
                    [int(v) for v in stat(f"n:{column.name}")], cap, share)
                # Both parts at 97.5 %: the average's interval then holds with >= 95 %.
                alpha = (1 - privacy.CONFIDENCE) / 2
                sum_half = privacy.half_width(sum_scale, integer, alpha)
                count_half = privacy.half_width(count_scale, True, alpha)
                released = [privacy.ratio(total, count, sum_half, count_half, low, high)
                            for total, count in zip(released, counts, strict=True)]
        for i, item in enumerate(released):
            values[i][measure.label] = item.value
            accuracy[i][measure.label] = item.accuracy()
    return [{"key": list(key), "values": v, "accuracy": a}
            for key, v, a in zip(keys, values, accuracy, strict=True)]


def _mechanisms(query: Query, selected: bool) -> list[str]:
    """The OpenDP mechanisms an answer used, for the answer and the docs."""
    used = ["laplace-threshold partition selection"] if selected else []
    kinds = {m.aggregate for m in query.measures}
    if kinds & {"count", "avg"}:
        used.append("discrete laplace (counts)")
    if kinds & {"sum", "avg"}:
        used.append("laplace (sums)")
    if "quantile" in kinds:
        used.append("exponential-mechanism quantile")
    return used
