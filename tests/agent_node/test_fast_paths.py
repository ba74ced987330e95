"""The node's fast paths keep their guarantees: group commit is durable and all-or-nothing,
the prepared access event is RFC 8785 exact, the two-level SQL gives exact aggregates, and
budgets, overlap control and revocation hold under concurrent queries (in-process engine
over a real SQLite vault)."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_node import accesslog
from agent_node import engine as engine_module
from agent_node.errors import BudgetExhausted, VaultError
from agent_node.home import init_home
from agent_node.vault import Batch, Vault
from consent.canonical import canonicalize
from consent.grants import issue_grant, issue_revocation
from consent.identity import Identity
from tests.agent_node.conftest import PASSPHRASE, THRESHOLD, InProcessNode, in_process_node

PURPOSE = "marketing-analytics"


Env = InProcessNode


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]) -> Env:
    return in_process_node(tmp_path_factory.mktemp("fast-paths"), bank_rows, "fast")


@pytest.fixture(scope="module")
def exact(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]) -> Env:
    """The same node in threshold mode, where exact aggregates and the overlap control are
    the point of a test."""
    return in_process_node(tmp_path_factory.mktemp("fast-exact"), bank_rows, "exact",
                           THRESHOLD)


def _grant(env: Env, wallet: Identity, requester: Identity, **kw: Any) -> str:
    credential = issue_grant(wallet, requester=requester.did, nodes=[env.home.identity.did],
                             purpose=kw.pop("purpose", PURPOSE), scopes=["transaction"],
                             ttl=timedelta(hours=2), **kw)
    return env.store.submit(credential)[0].id


def _run_all(fn: Any, n: int) -> list[Any]:
    results: list[Any] = [None] * n
    start = threading.Barrier(n)

    def call(i: int) -> None:
        start.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # collected and asserted on by the caller
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# -- group commit ---------------------------------------------------------------------------

def test_group_commit_is_durable_and_refusals_leave_nothing(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "v.sqlite", init_home(tmp_path / "h", PASSPHRASE).keys)

    def job(i: int) -> int:
        def write(conn: sqlite3.Connection, batch: Batch) -> int:
            if i % 5 == 0:
                raise BudgetExhausted("refused before writing")
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (f"k{i}", str(i)))
            return i
        return vault.commit(write)

    results = _run_all(job, 40)
    assert [r for r in results if isinstance(r, int)] == [i for i in range(40) if i % 5]
    assert all(isinstance(r, BudgetExhausted) for i, r in enumerate(results) if i % 5 == 0)
    # Committed means on disk: a fresh connection sees every accepted write, no refused one.
    fresh = sqlite3.connect(tmp_path / "v.sqlite")
    keys = {r[0] for r in fresh.execute("SELECT key FROM meta WHERE key LIKE 'k%'")}
    assert keys == {f"k{i}" for i in range(40) if i % 5}


def test_a_job_failing_after_writing_rolls_the_whole_batch_back(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "v.sqlite", init_home(tmp_path / "h", PASSPHRASE).keys)
    gate, running = threading.Event(), threading.Event()

    def blocker(conn: sqlite3.Connection, batch: Batch) -> None:
        running.set()
        gate.wait(30)  # holds the writer so that the next two jobs queue up into one batch

    def good(conn: sqlite3.Connection, batch: Batch) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('good', '1')")

    def bad(conn: sqlite3.Connection, batch: Batch) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('bad', '1')")
        raise RuntimeError("a bug after a write")

    first = threading.Thread(target=vault.commit, args=(blocker,))
    first.start()
    assert running.wait(10)
    outcomes: dict[str, BaseException | None] = {}

    def submit(name: str, fn: Any) -> None:
        try:
            vault.commit(fn)
            outcomes[name] = None
        except BaseException as exc:  # asserted below
            outcomes[name] = exc

    threads = [threading.Thread(target=submit, args=a) for a in (("good", good), ("bad", bad))]
    for t in threads:
        t.start()
        while vault.committer._queue.qsize() < threads.index(t) + 1:  # queued in this order
            threading.Event().wait(0.01)
    gate.set()
    for t in [first, *threads]:
        t.join()
    assert isinstance(outcomes["bad"], RuntimeError)
    assert isinstance(outcomes["good"], VaultError)  # same batch: rolled back with the bad job
    with vault.connection() as conn:
        assert conn.execute("SELECT COUNT(*) FROM meta WHERE key IN ('good', 'bad')"
                            ).fetchone() == (0,)
    # The writer survived: later jobs still commit.
    vault.commit(lambda conn, batch: conn.execute("INSERT INTO meta VALUES ('later', '1')"))
    with vault.connection() as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'later'").fetchone() == ("1",)


def test_worker_processes_take_turns_on_the_write_lock(tmp_path: Path) -> None:
    """Another worker process holding the vault's write lock makes this one's committer
    wait (not fail, not spin in SQLite's busy handler), and the jobs that queue meanwhile
    commit together in one batch once the lock is free."""
    vault = Vault(tmp_path / "v.sqlite", init_home(tmp_path / "h", PASSPHRASE).keys)
    other = os.open(tmp_path / "v.sqlite.write-lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)  # as the committer of another `serve --workers` process
    batches: list[int] = []

    def job(i: int) -> int:
        def write(conn: sqlite3.Connection, batch: Batch) -> int:
            if "id" not in batch.memo:
                batch.memo["id"] = len(batches)
                batches.append(0)
            batches[batch.memo["id"]] += 1
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (f"w{i}", str(i)))
            return i
        return vault.commit(write)

    results: list[Any] = []
    threads = [threading.Thread(target=lambda i=i: results.append(job(i))) for i in range(8)]
    for t in threads:
        t.start()
    threading.Event().wait(0.5)
    assert results == [] and batches == []  # nothing committed while the other holds the lock
    fcntl.flock(other, fcntl.LOCK_UN)
    for t in threads:
        t.join(10)
    assert sorted(results) == list(range(8))
    assert len(batches) <= 2 and sum(batches) == 8  # the waiting jobs went in one batch
    os.close(other)


def test_commits_go_on_when_the_write_lock_cannot_be_opened(tmp_path: Path) -> None:
    """A lock file that cannot be opened (here a directory in its place) costs promptness,
    never a hang: SQLite's own write lock still orders the writers."""
    (tmp_path / "v.sqlite.write-lock").mkdir()
    vault = Vault(tmp_path / "v.sqlite", init_home(tmp_path / "h", PASSPHRASE).keys)
    done = threading.Event()
    threading.Thread(target=lambda: (vault.commit(lambda conn, batch: conn.execute(
        "INSERT INTO meta VALUES ('after', '1')")), done.set()), daemon=True).start()
    assert done.wait(10)
    with vault.connection() as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'after'").fetchone() == ("1",)


# -- access log -----------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"time": "2026-01-01T00:00:00Z", "purpose": None, "grant_count": 0, "subject_count": 0},
    {"v": 2, "time": "t", "requester": "did:key:z6Mk", "reason": "ok", "grant_count": 2,
     "grants_root": "cd" * 32, "dataset": "contacts", "outcome": "answered",
     "subjects_root": "ab" * 32, "node": "did:key:z6Mx", "purpose": "quote-generation",
     "subject_count": 12},
    {"sequence": 1, "se": 2, "seq2": 3, "\u00e9": 4, "\U0001f600": 5, "\uff61": 6, "time": "t"},
])
@pytest.mark.parametrize("seq", [1, 9, 10, 123456])
def test_prepared_event_is_the_canonical_body(body: dict[str, Any], seq: int) -> None:
    """The halves around ``seq`` give exactly RFC 8785's bytes of the whole body, for
    names sorting just before and after "seq" and outside the BMP (UTF-16 order)."""
    assert accesslog.prepare(body).canonical(seq) == canonicalize({**body, "seq": seq})
    with pytest.raises(ValueError):
        accesslog.prepare({**body, "seq": 1})


def test_batched_events_chain_like_single_appends(env: Env) -> None:
    requester = Identity.generate()
    _grant(env, env.wallets[0], requester)
    for _ in range(3):
        env.engine.run({"dataset": "contacts", "purpose": PURPOSE, "measures": ["count"]},
                       requester.did)
    with env.vault.connection() as conn:
        rows = conn.execute("SELECT seq, body, body_digest, prev_hash, hash FROM access_log "
                            "ORDER BY seq").fetchall()
    prev = accesslog.GENESIS
    for seq, body, digest, prev_hash, hash_ in rows:
        assert seq > 0
        assert accesslog.body_digest(json.loads(body)) == digest
        assert prev_hash == prev and accesslog.chain_hash(prev, digest) == hash_
        prev = hash_


# -- answers --------------------------------------------------------------------------------

@pytest.mark.parametrize("plan", ["seek-each-subject", "filter-then-check-consent"])
def test_two_level_sql_gives_exact_aggregates(exact: Env, bank_rows: list[dict[str, Any]],
                                              plan: str, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    # The engine picks a plan by how many subjects consented; both must answer alike.
    monkeypatch.setattr(engine_module, "DENSE_FRACTION", 0 if plan.startswith("seek") else 10**9)
    requester = Identity.generate()
    for wallet in exact.wallets:
        _grant(exact, wallet, requester)
    answer = exact.engine.run({
        "dataset": "contacts", "purpose": PURPOSE, "group_by": ["job"],
        "measures": ["count", "sum:duration", "avg:age"],
        "filters": [{"column": "age", "op": "ge", "value": 30}]}, requester.did)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in bank_rows:
        if row["age"] >= 30:
            groups[row["job"]].append(row)
    expected = {job: rows for job, rows in groups.items()
                if len({r["customer_id"] for r in rows}) >= 5}
    got = {g["key"][0]: g["values"] for g in answer["groups"]}
    assert set(got) == set(expected)
    for job, rows in expected.items():
        ages = sorted(r["age"] for r in rows)
        assert got[job]["count"] == len(rows)
        assert got[job]["sum:duration"] == sum(r["duration"] for r in rows)
        assert got[job]["avg:age"] == pytest.approx(sum(ages) / len(ages))
    assert answer["mode"] == "threshold" and "suppressed_groups" not in answer


def test_dp_answer_uses_bounded_contributions(env: Env, bank_rows: list[dict[str, Any]]
                                              ) -> None:
    requester = Identity.generate()
    for wallet in env.wallets:
        _grant(env, wallet, requester, purpose="service-improvement", dp_epsilon=5.0)
    answer = env.engine.run({"dataset": "contacts", "purpose": "service-improvement",
                             "measures": ["count", "avg:age"], "epsilon": 2.0}, requester.did)
    values, accuracy = answer["groups"][0]["values"], answer["groups"][0]["accuracy"]
    # 50 customers x 6 rows; the count's noise has scale 6 / (2 / 3) = 9: more than 200 off
    # with probability exp(-200 / 9) < 1e-9.
    assert abs(values["count"] - len(bank_rows)) < 200
    assert 17 <= values["avg:age"] <= 100  # clamped to the column's bounds
    low, high = accuracy["count"]["ci95"]
    assert low <= values["count"] <= high and high - low == pytest.approx(2 * 9 * 3, rel=0.1)


# -- concurrency ----------------------------------------------------------------------------

def test_query_budget_holds_under_concurrent_queries(env: Env) -> None:
    requester = Identity.generate()
    ids = [_grant(env, w, requester, purpose="churn-analysis", max_queries=3)
           for w in env.wallets]
    query = {"dataset": "contacts", "purpose": "churn-analysis", "measures": ["count"],
             "grant_ids": ids}
    results = _run_all(lambda i: env.engine.run(query, requester.did), 8)
    answered = [r for r in results if isinstance(r, dict)]
    assert len(answered) == 3
    assert all(isinstance(r, BudgetExhausted) for r in results if not isinstance(r, dict))
    status = env.store.status(env.wallets[0].did, [ids[0]])[0]
    assert status["queries_used"] == 3


def test_overlap_control_holds_under_concurrent_queries(exact: Env,
                                                        bank_rows: list[dict[str, Any]]
                                                        ) -> None:
    """Fired together, the whole total and the total without a handful of customers must
    never both be released: the write phase serialises the overlap control."""
    ages = sorted({r["age"] for r in bank_rows})
    age = next(a for a in ages
               if 0 < len({r["customer_id"] for r in bank_rows if r["age"] == a}) < 5)
    for round_ in range(3):
        attacker = Identity.generate()
        for wallet in exact.wallets:
            _grant(exact, wallet, attacker, purpose="renewal-warning")
        base = {"dataset": "contacts", "purpose": "renewal-warning",
                "measures": ["sum:duration"]}
        queries = [base, {**base, "filters": [{"column": "age", "op": "ne", "value": age}]}]
        results = _run_all(lambda i, q=queries, who=attacker.did: exact.engine.run(q[i % 2],
                                                                                   who), 6)
        released = {i % 2 for i, r in enumerate(results) if r["groups"]}
        assert len(released) == 1, f"round {round_}: both totals were released"


def test_revocation_between_read_and_write_is_honoured(exact: Env, monkeypatch: Any) -> None:
    """A revocation committed after a query's read phase but before its write phase makes
    the query read again, so the revoked customer's rows are not in the answer. (The read
    phase is wrapped, not mocked, only to place the revocation exactly there; threshold
    mode, so the count is exact.)"""
    env = exact
    requester = Identity.generate()
    ids = [_grant(env, w, requester, purpose="quote-generation") for w in env.wallets]
    query = {"dataset": "contacts", "purpose": "quote-generation", "measures": ["count"]}
    real_read = env.engine._read
    calls = []

    def read_then_revoke(*args: Any) -> Any:
        plan = real_read(*args)
        if not calls:
            env.store.revoke(issue_revocation(env.wallets[0], ids[0]))
        calls.append(plan)
        return plan

    monkeypatch.setattr(env.engine, "_read", read_then_revoke)
    after = env.engine.run(query, requester.did)
    assert len(calls) == 2  # read again after the consent version moved
    with env.vault.connection() as conn:
        sid = conn.execute("SELECT sid FROM bindings WHERE did = ?",
                           (env.wallets[0].did,)).fetchone()[0]
        others = conn.execute("SELECT COUNT(*) FROM ds_contacts WHERE sid != ?",
                              (sid,)).fetchone()[0]
    assert after["groups"][0]["values"]["count"] == others


def test_covering_index_serves_group_by(env: Env) -> None:
    with env.vault.connection() as conn:
        plan = " ".join(r[3] for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT c_job, sid, COUNT(*), SUM(rfp), SUM(c_duration) "
            "FROM ds_contacts GROUP BY c_job, sid"))
    assert "COVERING INDEX ds_contacts_job" in plan and "TEMP B-TREE" not in plan
